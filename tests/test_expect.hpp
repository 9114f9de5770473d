// A GoogleTest helper the library's tests share: `f` must throw an E whose message contains
// `needle` (the typed errors name what is wrong; the tests check that they do).
#pragma once

#include <gtest/gtest.h>

#include <string>

namespace mxfp4::test {

template <typename E, typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace mxfp4::test

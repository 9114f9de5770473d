// The CPU backend's threads: one process-wide pool of persistent workers, sized by
// set_num_threads / MXFP4_NUM_THREADS (include/mxfp4/cpu.hpp). The thread that calls
// parallel_for runs tasks too, so num_threads() counts it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

namespace mxfp4::cpu {

// A non-owning reference to a callable `void(std::int64_t task)`; it must outlive the call it
// is passed to (a lambda written in the call's argument list does).
class TaskFn {
 public:
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, TaskFn>)
      TaskFn(F&& f)  // NOLINT(google-explicit-constructor): used like std::function
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, std::int64_t task) {
          (*static_cast<std::remove_reference_t<F>*>(object))(task);
        }) {}
  void operator()(std::int64_t task) const { call_(object_, task); }

 private:
  void* object_;
  void (*call_)(void*, std::int64_t);
};

// Runs fn(0), ..., fn(tasks - 1), each once, on the calling thread and the pool's workers, and
// returns when all have finished. Tasks are handed out in order to whichever thread is free, so
// they must not depend on which thread runs them. Runs everything on the calling thread when
// num_threads() is 1, when there is at most one task, when called from inside a task (nested),
// or when another thread's call holds the pool (so concurrent callers never wait on each other).
// If tasks throw, the tasks not yet started are skipped and the first exception caught is
// rethrown here once every running task has finished.
void parallel_for(std::int64_t tasks, TaskFn fn);

// The number of CPUs this process may run on (its affinity mask), at least 1.
int hardware_threads();

// MXFP4_NUM_THREADS's value (null when unset) -> the thread count: n >= 1 as given, 0 or unset
// gives `hardware`. Anything else (not a decimal integer, negative, above 1024) gives `hardware`
// with a warning (empty when there is nothing to say).
struct ThreadsChoice {
  int threads;
  std::string warning;
};
ThreadsChoice parse_threads_env(const char* value, int hardware);

// The largest thread count set_num_threads accepts.
inline constexpr int kMaxThreads = 1024;

}  // namespace mxfp4::cpu

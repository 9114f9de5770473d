# Cross-compiling for AArch64 Linux with Debian's cross toolchain (g++-aarch64-linux-gnu).
# The test executables run under qemu-user (CMAKE_CROSSCOMPILING_EMULATOR), so ctest works as on
# a native build; see scripts/test-aarch64.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

set(MXFP4_AARCH64_SYSROOT /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH ${MXFP4_AARCH64_SYSROOT})
# Programs from the host; libraries and packages from the target's root, except header-only
# packages (nlohmann-json), which the host's CMake config describes equally well.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

find_program(MXFP4_QEMU_AARCH64 qemu-aarch64)
if(MXFP4_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${MXFP4_QEMU_AARCH64} -L ${MXFP4_AARCH64_SYSROOT})
endif()

#include "cpu/thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "mxfp4/cpu.hpp"
#include "mxfp4/error.hpp"

namespace mxfp4::cpu {

namespace {

// True on pool workers, and on a caller while it runs tasks: a parallel_for from there is nested
// and runs inline, so the pool never waits on itself and never multiplies its threads.
thread_local bool t_in_task = false;

class InTask {
 public:
  InTask() : previous_(std::exchange(t_in_task, true)) {}
  ~InTask() { t_in_task = previous_; }
  InTask(const InTask&) = delete;
  InTask& operator=(const InTask&) = delete;

 private:
  bool previous_;
};

// Polls `done` for up to kSpin before the thread blocks on a condition variable: workers then
// pick up the next of back-to-back calls (a decode loop) without a wake-up, and a caller whose
// workers finish just after it skips a sleep. Short, so that an idle process, or one with more
// threads than cores, does not keep cores busy.
constexpr auto kSpin = std::chrono::microseconds(50);

template <typename Done>
void spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1; !done(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) return;
  }
}

class ThreadPool {
 public:
  ThreadPool() = default;
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() { stop_workers(); }

  // Held by the thread that runs a job or resizes the pool: one job at a time.
  std::mutex& job_mutex() { return job_mutex_; }

  // The following need job_mutex() held.
  int workers() const { return static_cast<int>(workers_.size()); }
  bool started() const { return started_; }
  void resize(int workers);
  void run(std::int64_t tasks, TaskFn fn, int threads);

 private:
  void worker_main(int index, std::uint64_t seen);
  void run_tasks(TaskFn fn, std::int64_t tasks);
  void stop_workers();

  std::mutex job_mutex_;
  bool started_ = false;
  std::vector<std::thread> workers_;

  std::mutex mutex_;  // guards everything below except the atomics
  std::condition_variable wake_;
  std::condition_variable done_;
  bool stop_ = false;
  std::uint64_t generation_ = 0;             // of the latest job
  std::atomic<std::uint64_t> published_{0};  // generation_, for spinning workers
  const TaskFn* fn_ = nullptr;
  std::int64_t tasks_ = 0;
  int helpers_ = 0;             // workers 0 .. helpers_-1 may join the job
  bool open_ = false;           // workers may still join
  std::atomic<int> active_{0};  // workers running the job's tasks; changed under mutex_
  std::exception_ptr error_;
  std::atomic<std::int64_t> next_{0};  // the next task to hand out
};

void ThreadPool::stop_workers() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_)
    t.join();
  workers_.clear();
  std::lock_guard lock(mutex_);
  stop_ = false;
}

void ThreadPool::resize(int workers) {
  started_ = true;
  stop_workers();
  std::uint64_t seen;
  {
    std::lock_guard lock(mutex_);
    seen = generation_;
  }
  workers_.reserve(static_cast<std::size_t>(workers));
  for (int i = 0; i < workers; ++i) {
    try {
      workers_.emplace_back([this, i, seen] { worker_main(i, seen); });
    } catch (const std::system_error&) {
      break;  // the OS refused a thread: run with the ones we have (results do not change)
    }
  }
}

void ThreadPool::run_tasks(TaskFn fn, std::int64_t tasks) {
  for (;;) {
    const std::int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= tasks) return;
    try {
      fn(i);
    } catch (...) {
      next_.store(tasks, std::memory_order_relaxed);  // skip the tasks not yet handed out
      std::lock_guard lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
}

void ThreadPool::worker_main(int index, std::uint64_t seen) {
  t_in_task = true;
  for (;;) {
    spin_until([&] { return published_.load(std::memory_order_acquire) != seen; });
    const TaskFn* fn = nullptr;
    std::int64_t tasks = 0;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (!open_ || index >= helpers_) continue;
      active_.fetch_add(1, std::memory_order_relaxed);
      fn = fn_;
      tasks = tasks_;
    }
    run_tasks(*fn, tasks);
    bool last;
    {
      std::lock_guard lock(mutex_);
      last = active_.fetch_sub(1, std::memory_order_release) == 1;
    }
    if (last) done_.notify_one();
  }
}

void ThreadPool::run(std::int64_t tasks, TaskFn fn, int threads) {
  if (!started_ || workers() != threads - 1) resize(threads - 1);
  {
    std::lock_guard lock(mutex_);
    fn_ = &fn;
    tasks_ = tasks;
    helpers_ = static_cast<int>(std::min<std::int64_t>(workers(), tasks - 1));
    open_ = true;
    active_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    next_.store(0, std::memory_order_relaxed);
    ++generation_;
    published_.store(generation_, std::memory_order_release);
  }
  wake_.notify_all();
  {
    InTask in_task;
    run_tasks(fn, tasks);
  }
  {
    std::lock_guard lock(mutex_);
    open_ = false;  // every task is handed out: late wakers need not join
  }
  spin_until([&] { return active_.load(std::memory_order_acquire) == 0; });
  std::exception_ptr error;
  {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return active_.load(std::memory_order_relaxed) == 0; });
    fn_ = nullptr;
    error = std::exchange(error_, nullptr);
  }
  if (error) std::rethrow_exception(error);
}

ThreadPool& pool() {
  static ThreadPool instance;
  return instance;
}

struct ThreadSettings {
  std::atomic<int> threads;
  ThreadSettings() {
    const ThreadsChoice choice = parse_threads_env(std::getenv("MXFP4_NUM_THREADS"),  // NOLINT
                                                   hardware_threads());
    if (!choice.warning.empty())
      std::fprintf(stderr, "mxfp4: warning: %s\n", choice.warning.c_str());
    threads.store(choice.threads, std::memory_order_relaxed);
  }
};

ThreadSettings& settings() {
  static ThreadSettings instance;
  return instance;
}

void run_inline(std::int64_t tasks, TaskFn fn) {
  InTask in_task;
  for (std::int64_t i = 0; i < tasks; ++i)
    fn(i);
}

}  // namespace

void parallel_for(std::int64_t tasks, TaskFn fn) {
  if (tasks <= 0) return;
  const int threads = num_threads();
  if (tasks > 1 && threads > 1 && !t_in_task) {
    ThreadPool& p = pool();
    std::unique_lock job(p.job_mutex(), std::try_to_lock);
    if (job.owns_lock()) {
      p.run(tasks, fn, threads);
      return;
    }
  }
  run_inline(tasks, fn);
}

int hardware_threads() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return std::min(n, kMaxThreads);
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(std::min<unsigned>(n, kMaxThreads));
}

ThreadsChoice parse_threads_env(const char* value, int hardware) {
  if (value == nullptr || *value == '\0') return {hardware, {}};
  const std::string_view text(value);
  int n = -1;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec == std::errc() && end == text.data() + text.size() && n >= 0 && n <= kMaxThreads) {
    return {n == 0 ? hardware : n, {}};
  }
  return {hardware, "MXFP4_NUM_THREADS=" + std::string(text) + " is not an integer in [0, " +
                        std::to_string(kMaxThreads) + "]; ignored, using " +
                        std::to_string(hardware) + " threads"};
}

}  // namespace mxfp4::cpu

namespace mxfp4 {

void set_num_threads(int n) {
  if (n < 0 || n > cpu::kMaxThreads) {
    throw InvalidArgument("set_num_threads: n must be in [0, " + std::to_string(cpu::kMaxThreads) +
                          "] (0: one per CPU this process may run on), got " + std::to_string(n));
  }
  const int threads = n == 0 ? cpu::hardware_threads() : n;
  cpu::settings().threads.store(threads, std::memory_order_relaxed);
  // Start or stop workers now rather than in the next call, unless a task calls this (its
  // caller holds the pool); a pool not started yet starts at its first parallel call.
  if (cpu::t_in_task) return;
  cpu::ThreadPool& p = cpu::pool();
  std::lock_guard job(p.job_mutex());
  if (p.started() && p.workers() != threads - 1) p.resize(threads - 1);
}

int num_threads() {
  return cpu::settings().threads.load(std::memory_order_relaxed);
}

}  // namespace mxfp4

// NcclCommunicator: the communicator over NCCL, one process per GPU. Built from the launch
// environment (dist/launch.hpp): it selects GPU LOCAL_RANK, exchanges NCCL's unique id through the
// TCP rendezvous (dist/rendezvous.hpp), and creates a non-blocking NCCL communicator. Collectives
// run on a stream of their own, ordered after the work queued on fathom's stream, so a gradient
// bucket reduces while the backward pass goes on. Faults: the rendezvous monitor names a rank that
// exited, failed, stopped responding or fell behind while others waited longer than the timeout;
// every rank then aborts its NCCL communicator, prints one line naming that rank, and exits
// (unless the program ends sooner). Needs nccl.h and libnccl (CMake target fathom::nccl).
#pragma once

#include <nccl.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/dist/communicator.hpp"
#include "fathom/dist/launch.hpp"
#include "fathom/dist/rendezvous.hpp"

namespace fathom::dist {

struct NcclOptions {
  double timeout_s = 600;          // a collective waiting longer than this is a fault
  double connect_timeout_s = 300;  // for all ranks to join at start
  double exit_after_fault_s = 10;  // after a fault, exit the process if it has not ended by then
                                   // (negative: never; the program must then end itself)
  // How the collectives share the GPU with the backward pass they overlap. NCCL's kernels take
  // whole SMs (one CTA a channel) for as long as a collective runs; max_ctas caps that (0: NCCL's
  // choice, or NCCL_MAX_CTAS from the environment). On a high-priority stream, a collective's CTAs
  // are scheduled as soon as SMs free up rather than after the compute kernels queued before it.
  int max_ctas = 0;
  bool high_priority = true;
};

class NcclCommunicator final : public Communicator {
 public:
  // Call before anything else uses CUDA in this process: it selects the GPU (LOCAL_RANK).
  explicit NcclCommunicator(const LaunchEnv& env, NcclOptions options = {})
      : env_(env), options_(options), rendezvous_(env, options.connect_timeout_s) {
    int devices = 0;
    FATHOM_CUDA_CHECK(cudaGetDeviceCount(&devices));
    FATHOM_CHECK(env.local_rank < devices, "rank " << env.rank << ": local rank " << env.local_rank
                                                   << " but this host has " << devices << " GPU"
                                                   << (devices == 1 ? "" : "s"));
    FATHOM_CUDA_CHECK(cudaSetDevice(env.local_rank));
    int least = 0, greatest = 0;  // numerically: greatest is the highest priority
    FATHOM_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    FATHOM_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking,
                                                   options.high_priority ? greatest : least));
    FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));

    ncclUniqueId id{};
    if (env.rank == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    const std::string bytes = rendezvous_.broadcast(
        std::string(reinterpret_cast<const char*>(&id), sizeof id), options.connect_timeout_s);
    FATHOM_CHECK(bytes.size() == sizeof id,
                 "rendezvous: NCCL id of " << bytes.size() << " bytes, expected " << sizeof id);
    std::memcpy(&id, bytes.data(), sizeof id);

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // calls return at once; errors and hangs are seen by polling (abortable)
    FATHOM_CHECK(options.max_ctas >= 0,
                 "NCCL: max_ctas must be 0 (NCCL's choice) or positive, got " << options.max_ctas);
    if (options.max_ctas > 0) {
      config.maxCTAs = options.max_ctas;
      config.minCTAs = 1;
    }
    ncclResult_t r = ncclCommInitRankConfig(&comm_, env.world_size, id, env.rank, &config);
    if (r == ncclSuccess || r == ncclInProgress)
      r = settle(options.connect_timeout_s, "ncclCommInitRankConfig");
    check(r, "ncclCommInitRankConfig");

    TcpRendezvous::Watch watch;
    watch.issued = [this] { return issued_.load(); };
    watch.stalled_s = [this] { return stalled_s(); };
    watch.on_fault = [this](const std::string& why) { on_fault(why); };
    watch.timeout_s = options.timeout_s;
    rendezvous_.start_monitor(std::move(watch));
  }

  ~NcclCommunicator() override {
    const bool clean = !faulted_ && !std::uncaught_exceptions();
    if (comm_) {
      if (clean) {
        cudaStreamSynchronize(stream_);
        ncclCommFinalize(comm_);
        settle(30, "ncclCommFinalize");
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    rendezvous_.close(clean);
    cudaEventDestroy(ready_);
    cudaEventDestroy(done_);
    cudaStreamDestroy(stream_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return env_.rank; }
  int world_size() const override { return env_.world_size; }
  std::string_view backend() const override { return "nccl"; }
  const LaunchEnv& launch() const { return env_; }
  cudaStream_t stream() const { return stream_; }

  // How many collectives NCCL could not queue at once (ncclInProgress): the host waited for them.
  std::int64_t waited_to_queue() const { return in_progress_; }

  // Tells every rank that this one failed (call before exiting on an error).
  void report_failure(const std::string& why) { rendezvous_.report_failure(why); }

  void all_reduce(const void* send, void* recv, std::size_t count, DataType type,
                  ReduceOp op) override {
    enqueue("all_reduce", [&] {
      return ncclAllReduce(send, recv, count, nccl_type(type), nccl_op(op), comm_, stream_);
    });
  }
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override {
    enqueue("reduce_scatter", [&] {
      return ncclReduceScatter(send, recv, count, nccl_type(type), nccl_op(op), comm_, stream_);
    });
  }
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override {
    enqueue("all_gather",
            [&] { return ncclAllGather(send, recv, count, nccl_type(type), comm_, stream_); });
  }
  void broadcast(void* buffer, std::size_t count, DataType type, int root) override {
    enqueue("broadcast", [&] {
      return ncclBroadcast(buffer, buffer, count, nccl_type(type), root, comm_, stream_);
    });
  }
  void barrier() override {
    Tensor<float, Cuda> one = Tensor<float, Cuda>::zeros(Shape{1});
    all_reduce(one.data(), one.data(), 1, DataType::float32, ReduceOp::sum);
    synchronize();
  }
  void wait() override {
    FATHOM_CUDA_CHECK(cudaEventRecord(done_, stream_));
    FATHOM_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), done_, 0));
  }
  void synchronize() override {
    // Polls rather than blocks, so that a fault found by the monitor ends the wait.
    while (cudaStreamQuery(stream_) == cudaErrorNotReady) {
      throw_if_faulted();
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    throw_if_faulted();
  }

 private:
  static ncclDataType_t nccl_type(DataType t) {
    switch (t) {
      case DataType::float32:
        return ncclFloat32;
      case DataType::float64:
        return ncclFloat64;
      case DataType::bfloat16:
        return ncclBfloat16;
      case DataType::int32:
        return ncclInt32;
      case DataType::int64:
        return ncclInt64;
      case DataType::uint8:
        return ncclUint8;
    }
    return ncclFloat32;
  }
  static ncclRedOp_t nccl_op(ReduceOp op) {
    switch (op) {
      case ReduceOp::avg:
        return ncclAvg;
      case ReduceOp::max:
        return ncclMax;
      case ReduceOp::sum:
        return ncclSum;
    }
    return ncclSum;
  }

  void check(ncclResult_t r, const char* what) const {
    FATHOM_CHECK(r == ncclSuccess, "rank " << env_.rank << ": " << what
                                           << " failed: " << ncclGetErrorString(r)
                                           << (r == ncclSystemError || r == ncclRemoteError
                                                   ? " (a peer may have died; see NCCL_DEBUG=WARN)"
                                                   : ""));
  }

  // A non-blocking communicator's call may still be in progress when it returns: wait for it.
  ncclResult_t settle(double timeout_s, const char* what) {
    const auto t0 = detail::Clock::now();
    ncclResult_t state = ncclInProgress;
    while (true) {
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) return ncclInternalError;
      if (state != ncclInProgress) return state;
      if (faulted_) return ncclRemoteError;
      FATHOM_CHECK(detail::seconds_since(t0) < timeout_s, "rank " << env_.rank << ": " << what
                                                                  << " did not complete within "
                                                                  << timeout_s << " s");
      std::this_thread::yield();
    }
  }

  template <class Call>
  void enqueue(const char* what, Call&& call) {
    throw_if_faulted();
    // After what fathom's stream has queued (the gradients of this bucket).
    FATHOM_CUDA_CHECK(cudaEventRecord(ready_, cuda::stream()));
    FATHOM_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    ncclResult_t r = call();
    if (r == ncclInProgress) {
      ++in_progress_;
      r = settle(options_.timeout_s, what);
    }
    check(r, what);
    cudaEvent_t finished = nullptr;
    FATHOM_CUDA_CHECK(cudaEventCreateWithFlags(&finished, cudaEventDisableTiming));
    FATHOM_CUDA_CHECK(cudaEventRecord(finished, stream_));
    std::lock_guard<std::mutex> lock(pending_mutex_);
    pending_.push_back({finished, detail::Clock::now()});
    ++issued_;
  }

  // How long the oldest unfinished collective has been queued (0 when none), for the monitor.
  double stalled_s() {
    std::lock_guard<std::mutex> lock(pending_mutex_);
    cudaSetDevice(env_.local_rank);  // the monitor's thread
    while (!pending_.empty() && cudaEventQuery(pending_.front().event) == cudaSuccess) {
      cudaEventDestroy(pending_.front().event);
      pending_.pop_front();
    }
    return pending_.empty() ? 0.0 : detail::seconds_since(pending_.front().since);
  }

  void on_fault(const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(fault_mutex_);
      fault_ = why;
    }
    faulted_ = true;
    std::fprintf(stderr, "fathom: rank %d: stopping: %s\n", env_.rank, why.c_str());
    std::fflush(stderr);
    ncclCommAbort(comm_);  // unblocks kernels that wait for the rank at fault
    comm_ = nullptr;
    if (options_.exit_after_fault_s >= 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(options_.exit_after_fault_s));
      std::_Exit(1);
    }
  }

  void throw_if_faulted() {
    if (!faulted_) return;
    std::lock_guard<std::mutex> lock(fault_mutex_);
    if (!fault_.empty()) FATHOM_FAIL("rank " << env_.rank << " stopped: " << fault_);
  }

  struct Pending {
    cudaEvent_t event;
    detail::Clock::time_point since;
  };

  LaunchEnv env_;
  NcclOptions options_;
  TcpRendezvous rendezvous_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  std::mutex pending_mutex_, fault_mutex_;
  std::deque<Pending> pending_;
  std::atomic<std::int64_t> issued_{0};
  std::int64_t in_progress_ = 0;
  std::string fault_;
  std::atomic<bool> faulted_{false};
};

}  // namespace fathom::dist

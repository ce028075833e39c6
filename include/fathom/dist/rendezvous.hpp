// TcpRendezvous: how the processes of a launch find each other and watch each other. Rank 0
// listens at MASTER_ADDR:MASTER_PORT, the other ranks connect to it; rank 0's bytes (NCCL's unique
// id) are sent to every rank. The connections then stay open as a health channel: a rank whose
// process exits, that stops sending heartbeats, that reports a failure, or that falls behind while
// the others wait in a collective, is named to every rank within a bounded time (the monitor).
// POSIX sockets only: no MPI library.
#pragma once

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fathom/core/error.hpp"
#include "fathom/dist/launch.hpp"

namespace fathom::dist {

namespace detail {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Writes all of `n` bytes; false when the peer is gone.
inline bool send_all(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

// Reads exactly `n` bytes within `timeout_s`; false on end of stream, error or timeout.
inline bool recv_all(int fd, void* data, std::size_t n, double timeout_s) {
  char* p = static_cast<char*>(data);
  const auto t0 = Clock::now();
  while (n > 0) {
    const double left = timeout_s - seconds_since(t0);
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(std::min(left, 1.0) * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) continue;
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

// One message of the health channel: a kind, a number and a text.
struct Message {
  char kind = 0;  // 'H' heartbeat (value: collectives issued), 'S' stalled, 'F' failed, 'B' bye,
                  // 'A' abort (from rank 0; value: the rank at fault, or -1)
  std::int64_t value = 0;
  std::string text;
};

inline bool send_message(int fd, const Message& m) {
  char head[13];
  head[0] = m.kind;
  std::memcpy(head + 1, &m.value, 8);
  const auto len = static_cast<std::uint32_t>(m.text.size());
  std::memcpy(head + 9, &len, 4);
  return send_all(fd, head, sizeof head) && send_all(fd, m.text.data(), m.text.size());
}

inline bool recv_message(int fd, Message& m, double timeout_s) {
  char head[13];
  if (!recv_all(fd, head, sizeof head, timeout_s)) return false;
  m.kind = head[0];
  std::memcpy(&m.value, head + 1, 8);
  std::uint32_t len = 0;
  std::memcpy(&len, head + 9, 4);
  if (len > (1u << 20)) return false;
  m.text.assign(len, '\0');
  return len == 0 || recv_all(fd, m.text.data(), len, timeout_s);
}

constexpr std::uint32_t rendezvous_magic = 0xfa7b0d15u;

}  // namespace detail

class TcpRendezvous {
 public:
  // What the monitor watches on this rank (set by the communicator it serves).
  struct Watch {
    std::function<std::int64_t()> issued;  // collectives this rank has issued so far
    std::function<double()> stalled_s;     // how long its oldest unfinished collective has waited
    std::function<void(const std::string&)> on_fault;  // called once, from the monitor thread
    double timeout_s = 300;  // a collective or a heartbeat older than this is a fault
    double heartbeat_s = 0.5;
  };

  // Connects the ranks of `env`; fails (naming what is missing) after `timeout_s`.
  TcpRendezvous(const LaunchEnv& env, double timeout_s) : rank_(env.rank), world_(env.world_size) {
    if (world_ == 1) return;
    try {
      if (rank_ == 0)
        listen_and_accept(env, timeout_s);
      else
        connect_to_root(env, timeout_s);
    } catch (...) {
      close(false);
      throw;
    }
  }
  ~TcpRendezvous() { close(false); }
  TcpRendezvous(const TcpRendezvous&) = delete;
  TcpRendezvous& operator=(const TcpRendezvous&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }

  // Rank 0's `bytes` on every rank (call on every rank, before start_monitor).
  std::string broadcast(const std::string& bytes, double timeout_s) {
    if (world_ == 1) return bytes;
    if (rank_ == 0) {
      for (int r = 1; r < world_; ++r)
        FATHOM_CHECK(detail::send_message(fds_[static_cast<std::size_t>(r)], {'D', 0, bytes}),
                     "rendezvous: rank " << r << " closed its connection during setup");
      return bytes;
    }
    detail::Message m;
    FATHOM_CHECK(detail::recv_message(fds_[0], m, timeout_s) && m.kind == 'D',
                 "rendezvous: no data from rank 0 within " << timeout_s << " s");
    return m.text;
  }

  // Starts the monitor thread.
  void start_monitor(Watch watch) {
    if (world_ == 1) return;
    watch_ = std::move(watch);
    monitor_ = std::thread([this] { rank_ == 0 ? monitor_root() : monitor_rank(); });
  }

  // Tells rank 0 (which tells every rank) that this rank failed, with why.
  void report_failure(const std::string& why) {
    if (world_ == 1 || closed_) return;
    std::lock_guard<std::mutex> lock(send_mutex_);
    if (rank_ == 0) {
      fault(0, "rank 0 failed: " + why, false);
    } else {
      detail::send_message(fds_[0], {'F', rank_, why});
    }
  }

  // Ends the monitor; `clean`: this rank finished normally (the others are told it left on
  // purpose).
  void close(bool clean = true) {
    if (closed_.exchange(true)) return;
    stop_ = true;
    if (clean) {
      std::lock_guard<std::mutex> lock(send_mutex_);
      for (int fd : fds_)
        if (fd >= 0) detail::send_message(fd, {'B', rank_, {}});
    }
    if (monitor_.joinable()) monitor_.join();
    for (int& fd : fds_)
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = -1;
  }

 private:
  void listen_and_accept(const LaunchEnv& env, double timeout_s) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    FATHOM_CHECK(listen_fd_ >= 0, "rendezvous: cannot create a socket: " << std::strerror(errno));
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<std::uint16_t>(env.master_port));
    FATHOM_CHECK(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0,
                 "rendezvous: rank 0 cannot listen on port "
                     << env.master_port << ": " << std::strerror(errno)
                     << " (set MASTER_PORT to a free port)");
    FATHOM_CHECK(::listen(listen_fd_, world_) == 0,
                 "rendezvous: listen failed: " << std::strerror(errno));
    fds_.assign(static_cast<std::size_t>(world_), -1);
    const auto t0 = detail::Clock::now();
    int joined = 1;
    while (joined < world_) {
      const double left = timeout_s - detail::seconds_since(t0);
      if (left <= 0) {
        std::string missing;
        for (int r = 1; r < world_; ++r)
          if (fds_[static_cast<std::size_t>(r)] < 0)
            missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        FATHOM_FAIL("rendezvous: rank" << (joined + 1 < world_ ? "s " : " ") << missing
                                       << " did not connect to rank 0 at port " << env.master_port
                                       << " within " << timeout_s << " s");
      }
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(std::min(left, 1.0) * 1000) + 1) <= 0) continue;
      const int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      std::uint32_t hello[3];
      if (!detail::recv_all(fd, hello, sizeof hello, 10.0) ||
          hello[0] != detail::rendezvous_magic) {
        ::close(fd);  // not one of ours
        continue;
      }
      const int r = static_cast<int>(hello[1]);
      FATHOM_CHECK(static_cast<int>(hello[2]) == world_,
                   "rendezvous: rank " << r << " was started with world size " << hello[2]
                                       << ", rank 0 with " << world_);
      FATHOM_CHECK(r > 0 && r < world_ && fds_[static_cast<std::size_t>(r)] < 0,
                   "rendezvous: two processes claim rank " << r << " (or it is outside [1, "
                                                           << world_ << "))");
      set_nodelay(fd);
      fds_[static_cast<std::size_t>(r)] = fd;
      ++joined;
    }
  }

  void connect_to_root(const LaunchEnv& env, double timeout_s) {
    fds_.assign(1, -1);
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const std::string port = std::to_string(env.master_port);
    const int rc = ::getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &found);
    FATHOM_CHECK(rc == 0 && found, "rendezvous: cannot resolve MASTER_ADDR '"
                                       << env.master_addr << "': " << ::gai_strerror(rc));
    const auto t0 = detail::Clock::now();
    int fd = -1;
    while (true) {
      fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0) break;
      if (fd >= 0) ::close(fd);
      fd = -1;
      if (detail::seconds_since(t0) > timeout_s) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ::freeaddrinfo(found);
    FATHOM_CHECK(fd >= 0, "rendezvous: rank " << rank_ << " cannot reach rank 0 at "
                                              << env.master_addr << ":" << env.master_port
                                              << " within " << timeout_s << " s");
    set_nodelay(fd);
    const std::uint32_t hello[3] = {detail::rendezvous_magic, static_cast<std::uint32_t>(rank_),
                                    static_cast<std::uint32_t>(world_)};
    FATHOM_CHECK(detail::send_all(fd, hello, sizeof hello),
                 "rendezvous: rank 0 closed the connection");
    fds_[0] = fd;
  }

  static void set_nodelay(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }

  // Rank 0: a fault was found (or reported); tell every rank, then this one.
  void fault(int culprit, const std::string& why, bool lock_send = true) {
    if (faulted_.exchange(true)) return;
    {
      std::unique_lock<std::mutex> lock(send_mutex_, std::defer_lock);
      if (lock_send) lock.lock();
      for (int r = 1; r < world_; ++r)
        if (fds_[static_cast<std::size_t>(r)] >= 0)
          detail::send_message(fds_[static_cast<std::size_t>(r)], {'A', culprit, why});
    }
    if (watch_.on_fault) watch_.on_fault(why);
  }

  void monitor_root() {
    const auto n = static_cast<std::size_t>(world_);
    std::vector<std::int64_t> issued(n, 0);
    std::vector<detail::Clock::time_point> seen(n, detail::Clock::now());
    std::vector<bool> left(n, false);
    std::vector<bool> stalled(n, false);
    while (!stop_ && !faulted_) {
      std::vector<pollfd> pfds;
      std::vector<int> ranks;
      for (int r = 1; r < world_; ++r)
        if (!left[static_cast<std::size_t>(r)]) {
          pfds.push_back({fds_[static_cast<std::size_t>(r)], POLLIN, 0});
          ranks.push_back(r);
        }
      if (!pfds.empty())
        ::poll(pfds.data(), pfds.size(), static_cast<int>(watch_.heartbeat_s * 1000));
      else
        std::this_thread::sleep_for(std::chrono::duration<double>(watch_.heartbeat_s));
      if (stop_) return;
      for (std::size_t i = 0; i < pfds.size(); ++i) {
        if (!(pfds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const int r = ranks[i];
        const auto ur = static_cast<std::size_t>(r);
        detail::Message m;
        if (!detail::recv_message(pfds[i].fd, m, 5.0)) {
          if (stop_) return;
          return fault(r, "rank " + std::to_string(r) +
                              " exited (its process ended or lost its connection)");
        }
        seen[ur] = detail::Clock::now();
        if (m.kind == 'H')
          issued[ur] = m.value;
        else if (m.kind == 'B')
          left[ur] = true;
        else if (m.kind == 'S')
          stalled[ur] = true, issued[ur] = m.value;
        else if (m.kind == 'F')
          return fault(r, "rank " + std::to_string(r) + " failed: " + m.text);
      }
      issued[0] = watch_.issued ? watch_.issued() : 0;
      stalled[0] = watch_.stalled_s && watch_.stalled_s() > watch_.timeout_s;
      for (int r = 1; r < world_; ++r) {
        const auto ur = static_cast<std::size_t>(r);
        if (!left[ur] && detail::seconds_since(seen[ur]) > watch_.timeout_s)
          return fault(r, "rank " + std::to_string(r) + " stopped responding (no heartbeat for " +
                              std::to_string(static_cast<int>(watch_.timeout_s)) + " s)");
      }
      if (std::find(stalled.begin(), stalled.end(), true) == stalled.end()) continue;
      // Someone waits in a collective past the timeout: the rank that issued the fewest is behind.
      int behind = -1;
      for (int r = 0; r < world_; ++r)
        if (!left[static_cast<std::size_t>(r)] &&
            (behind < 0 ||
             issued[static_cast<std::size_t>(r)] < issued[static_cast<std::size_t>(behind)]))
          behind = r;
      const std::int64_t most = *std::max_element(issued.begin(), issued.end());
      const std::string limit = std::to_string(static_cast<int>(watch_.timeout_s)) + " s";
      if (behind >= 0 && issued[static_cast<std::size_t>(behind)] < most)
        return fault(behind, "rank " + std::to_string(behind) + " is hung: it issued " +
                                 std::to_string(issued[static_cast<std::size_t>(behind)]) +
                                 " collectives while others issued " + std::to_string(most) +
                                 " and waited more than " + limit);
      return fault(-1, "a collective did not complete within " + limit +
                           " although every rank issued it (a NCCL or network fault)");
    }
  }

  void monitor_rank() {
    auto last_beat = detail::Clock::now() - std::chrono::hours(1);
    bool told_stall = false;
    while (!stop_ && !faulted_) {
      if (detail::seconds_since(last_beat) >= watch_.heartbeat_s) {
        std::lock_guard<std::mutex> lock(send_mutex_);
        if (closed_) return;
        const bool stall = !told_stall && watch_.stalled_s && watch_.stalled_s() > watch_.timeout_s;
        detail::send_message(fds_[0], {stall ? 'S' : 'H', watch_.issued ? watch_.issued() : 0, {}});
        told_stall = told_stall || stall;
        last_beat = detail::Clock::now();
      }
      pollfd pfd{fds_[0], POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(watch_.heartbeat_s * 1000)) <= 0) continue;
      if (stop_) return;
      detail::Message m;
      if (!detail::recv_message(fds_[0], m, 5.0)) {
        if (stop_) return;
        faulted_ = true;
        if (watch_.on_fault)
          watch_.on_fault("rank 0 exited (its process ended or lost its connection)");
        return;
      }
      if (m.kind == 'A') {
        faulted_ = true;
        if (watch_.on_fault) watch_.on_fault(m.text);
        return;
      }
      if (m.kind == 'B') return;  // rank 0 finished: nothing left to watch
    }
  }

  int rank_ = 0, world_ = 1;
  int listen_fd_ = -1;
  std::vector<int> fds_;  // rank 0: one per rank (its own unused); others: [0] = rank 0
  Watch watch_;
  std::thread monitor_;
  std::mutex send_mutex_;
  std::atomic<bool> stop_{false}, closed_{false}, faulted_{false};
};

}  // namespace fathom::dist

// Tells whether the client of an HTTP request has gone away while its handler waits for the
// engine. cpp-httplib 0.11 (Debian 12) gives handlers no access to the socket, so the probe finds
// it once by the connection's addresses (peer address and port, local port) among this process's
// sockets; the socket stays open for as long as the handler (and its content provider) runs.
#pragma once
#include <string>

namespace stem {

class ConnectionProbe {
 public:
  ConnectionProbe(const std::string& remote_addr, int remote_port, int local_port);
  // True once the peer has closed or reset the connection.
  bool closed() const;
  bool found() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

}  // namespace stem

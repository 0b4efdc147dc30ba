// `stemserve serve`: loads the model, runs the engine loop, the HTTP API and the gRPC API until
// SIGTERM/SIGINT. Its flags: server/options.h.
#pragma once
#include "server/options.h"

namespace stem {

// Runs the server; returns the process exit code.
int run_serve(const ServeOptions& options);

}  // namespace stem

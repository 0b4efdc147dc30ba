// The stemserve command line: `stemserve generate ...` (one prompt to stdout) and
// `stemserve serve ...` (the HTTP API).
#pragma once

namespace stem {

// Parses argv, runs the chosen subcommand, returns the process exit code. Errors are
// reported on stderr as one line; nothing escapes as an exception.
int run_cli(int argc, char** argv);

}  // namespace stem

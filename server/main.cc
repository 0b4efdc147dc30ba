#include "server/cli.h"

int main(int argc, char** argv) { return stem::run_cli(argc, argv); }

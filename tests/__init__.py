"""The test suite. The tests fork child processes (which exec at once) while gRPC threads run in the test process;
gRPC's fork handlers would abort some of those children, so they are off before anything imports grpc."""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

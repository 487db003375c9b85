# The suite needs a distributed node (Drove replicates over Erlang distribution and the
# multi-node tests start peers with :peer).
Drove.TestCluster.ensure_distributed!(:drove_test)

# assert_receive without a timeout waits up to 10 s, not ExUnit's 100 ms: a message that
# must come may come late on a loaded machine, and waiting longer costs only failing tests.
ExUnit.start(exclude: [:chaos_long, :sanitizer], assert_receive_timeout: 10_000)

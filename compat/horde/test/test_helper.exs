# Like the main suite: a distributed node (the multi-node tests start peers with
# Drove.TestCluster, compiled in from ../../test/support).
Drove.TestCluster.ensure_distributed!(:horde_compat_test)

# assert_receive without a timeout waits up to 10 s, not ExUnit's 100 ms (see the main
# suite's test_helper.exs: a loaded machine delivers late).
ExUnit.start(assert_receive_timeout: 10_000)

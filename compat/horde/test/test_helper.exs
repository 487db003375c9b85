# Like the main suite: a distributed node (the multi-node tests start peers with
# Drove.TestCluster, compiled in from ../../test/support).
Drove.TestCluster.ensure_distributed!(:horde_compat_test)

ExUnit.start()

# The suite needs a distributed node (Drove replicates over Erlang distribution and the
# multi-node tests start peers with :peer).
Drove.TestCluster.ensure_distributed!(:drove_test)

ExUnit.start(exclude: [:chaos_long, :sanitizer])

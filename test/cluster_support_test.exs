defmodule Drove.TestClusterTest do
  # Self-test of the multi-node helper in test/support/cluster.ex.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: Cluster

  @moduletag :cluster

  defp node_list(node), do: Cluster.rpc(node, Node, :list, [])

  defp assert_mesh(nodes) do
    for node <- nodes do
      assert node in Node.list()
      assert Enum.sort(nodes -- [node]) == Enum.sort(node_list(node) -- [node()])
    end
  end

  defp split?(a, b), do: b not in node_list(a) and a not in node_list(b)

  test "start, partition, heal, kill, restart and stop real nodes" do
    [a, b, c] = nodes = Cluster.start_nodes(3)

    assert Enum.all?(nodes, &(&1 |> Atom.to_string() |> String.ends_with?("@127.0.0.1")))
    assert Enum.uniq(nodes) == nodes
    assert_mesh(nodes)
    assert nodes -- Cluster.nodes() == []

    for node <- nodes do
      started = Cluster.rpc(node, Application, :started_applications, [])
      assert List.keymember?(started, :drove, 0)
      assert Cluster.rpc(node, Node, :get_cookie, []) == Node.get_cookie()
    end

    for node <- nodes, do: Cluster.spawn_forwarder(node, :probe)

    # Split [a, b] from [c].
    :ok = Cluster.partition([[a, b], [c]])
    assert split?(a, c) and split?(b, c)
    assert b in node_list(a)
    # The runner still reaches every side.
    assert Enum.all?(nodes, &(&1 in Node.list()))

    # Attempts to cross the split fail instead of reconnecting...
    Cluster.rpc(a, :erlang, :send, [{:probe, c}, :from_a])
    Cluster.rpc(c, :erlang, :send, [{:probe, b}, :from_c])
    assert Cluster.rpc(a, :net_adm, :ping, [c]) == :pang
    assert {:badrpc, :nodedown} = Cluster.rpc(c, :rpc, :call, [a, :erlang, :node, []])
    # ...while messages inside a group still flow.
    Cluster.rpc(a, :erlang, :send, [{:probe, b}, :from_a])
    assert_receive {:forwarded, :probe, ^b, :from_a}

    Cluster.consistently(
      fn ->
        Cluster.rpc(b, :erlang, :send, [{:probe, c}, :from_b])
        split?(a, c) and split?(b, c) and b in node_list(a)
      end,
      300
    )

    refute_received {:forwarded, :probe, ^c, _}
    refute_received {:forwarded, :probe, _, :from_c}

    # Heal: full mesh again and messages cross.
    :ok = Cluster.heal([[a, b], [c]])
    assert_mesh(nodes)
    Cluster.rpc(a, :erlang, :send, [{:probe, c}, :after_heal])
    assert_receive {:forwarded, :probe, ^c, :after_heal}

    # Abrupt kill.
    :ok = Cluster.kill(c)
    refute c in Node.list()
    refute c in Cluster.nodes()
    Cluster.wait_until(fn -> c not in node_list(a) and c not in node_list(b) end)

    # Same name again, reconnected to the survivors, app running.
    assert Cluster.restart(c) == c
    assert_mesh(nodes)
    assert List.keymember?(Cluster.rpc(c, Application, :started_applications, []), :drove, 0)

    # Graceful stop.
    :ok = Cluster.stop(b)
    refute b in Node.list()
    Cluster.wait_until(fn -> b not in node_list(a) and b not in node_list(c) end)
    assert b not in Cluster.nodes()
    assert [a, c] -- Cluster.nodes() == []
  end

  test "auto_connect: false keeps explicit links only; partitions of several groups" do
    [a, b, c] = nodes = Cluster.start_nodes(3, auto_connect: false, prefix: "noauto")
    assert Atom.to_string(a) =~ ~r/^noauto\d+_\d+@127\.0\.0\.1$/
    assert_mesh(nodes)
    assert Cluster.rpc(a, :application, :get_env, [:kernel, :dist_auto_connect]) == {:ok, :never}

    :ok = Cluster.partition([[a], [b], [c]])
    assert split?(a, b) and split?(b, c) and split?(a, c)
    :ok = Cluster.heal(nodes)
    assert_mesh(nodes)
    assert Cluster.rpc(a, :application, :get_env, [:kernel, :dist_auto_connect]) == {:ok, :never}
  end

  test "start_node with an explicit name, eval and rpc" do
    name = :"named#{System.unique_integer([:positive])}"
    node = Cluster.start_node(name, apps: [])
    assert node == :"#{name}@127.0.0.1"
    assert node in Node.list()
    refute List.keymember?(Cluster.rpc(node, Application, :started_applications, []), :drove, 0)

    # Funs from modules on the shared code path run on peers...
    assert Cluster.eval(node, &node/0) == node
    assert Cluster.rpc(node, Drove.TestCluster, :mesh?, [[]])

    # ...funs from test modules do not, and say why.
    error = assert_raise ArgumentError, fn -> Cluster.eval(node, fn -> :ok end) end
    assert error.message =~ "test/support"

    :ok = Cluster.kill(node)
    assert Cluster.start_node(name, apps: []) == node
    assert node in Node.list()
  end

  test "wait_until returns the value or flunks with a clear message" do
    assert Cluster.wait_until(fn -> 42 end) == 42

    counter = :counters.new(1, [])

    assert Cluster.wait_until(fn ->
             :counters.add(counter, 1, 1)
             :counters.get(counter, 1) >= 3 and :done
           end) == :done

    error =
      assert_raise ExUnit.AssertionError, fn ->
        Cluster.wait_until(fn -> false end, 50)
      end

    assert error.message =~ "timed out after 50 ms"
    assert error.message =~ "last value: false"

    error =
      assert_raise ExUnit.AssertionError, fn ->
        Cluster.wait_until(fn -> raise "boom" end, 30)
      end

    assert error.message =~ "boom"

    error =
      assert_raise ExUnit.AssertionError, fn ->
        Cluster.consistently(fn -> false end, 30)
      end

    assert error.message =~ "stopped holding"
  end
end

defmodule Horde.HandoffTest do
  # Horde.DynamicSupervisor keeps Horde's behaviour (a moved child starts afresh, and is not
  # asked anything) unless a child spec opts in with handoff: true.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Drove.Test.{HandoffPeer, Keeper}
  alias Horde.Test.Peer

  @moduletag :cluster
  @moduletag timeout: 120_000
  @moduletag :capture_log

  @sup Horde.HandoffTest.Supervisor

  test "a graceful stop moves an opted-in child with its state, any other one without" do
    [a, b] = nodes = C.start_nodes(2, prefix: "hhand", env: [logger: [level: :error]])
    members = for n <- nodes, do: {@sup, n}
    for n <- nodes, do: C.rpc(n, Peer, :start_supervisor, [@sup, [members: members]])

    C.wait_until(
      fn -> Enum.all?(nodes, &(C.rpc(&1, Peer, :member_statuses, [@sup])[b] == :alive)) end,
      15_000
    )

    # children opted in, and children with Horde's specs (which would tell this process if
    # they were asked for their state)
    test = self()
    opted_spec = &Keeper.spec/1
    horde_spec = &(&1 |> Keeper.spec({:block, test}) |> Map.delete(:handoff))
    # (Horde.UniformDistribution places as Drove.Distribution.Uniform does)
    placed = fn prefix, make ->
      for n <- nodes, t <- HandoffPeer.placed(@sup, nodes, n, prefix, 3, make), do: t
    end

    opted = placed.("hh_in", opted_spec)
    horde = placed.("hh_out", horde_spec)
    tags = opted ++ horde

    for t <- opted do
      {:ok, _} = C.rpc(a, Horde.DynamicSupervisor, :start_child, [@sup, opted_spec.(t)])
    end

    for t <- horde do
      {:ok, _} = C.rpc(a, Horde.DynamicSupervisor, :start_child, [@sup, horde_spec.(t)])
    end

    pids = C.rpc(a, HandoffPeer, :pids, [@sup])
    for t <- tags, do: :ok = GenServer.call(pids[t], {:put, :kept})
    on_b = for t <- tags, node(pids[t]) == b, do: t
    assert Enum.any?(on_b, &(&1 in opted)) and Enum.any?(on_b, &(&1 in horde))

    C.stop(b)

    C.wait_until(fn ->
      pids = C.rpc(a, HandoffPeer, :pids, [@sup])
      Enum.all?(tags, &(is_pid(pids[&1]) and node(pids[&1]) == a))
    end)

    refute_received {:asked, _, _}

    for t <- tags do
      view = GenServer.call(C.rpc(a, HandoffPeer, :pids, [@sup])[t], :get)

      expected =
        cond do
          t not in on_b -> %{value: :kept, delivered: 0}
          t in opted -> %{value: :kept, delivered: 1}
          true -> %{value: :fresh, delivered: 0}
        end

      assert Map.take(view, [:value, :delivered]) == expected, inspect({t, view})
    end
  end
end

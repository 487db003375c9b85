defmodule Drove.StartDurabilityTest do
  # start_child answers {:ok, pid} only once another member than the child's node holds the
  # child's entry (so it survives the loss of that node right after), whether the child is
  # placed on the caller's node or on another; the node's DynamicSupervisor is not held
  # while it waits.
  use ExUnit.Case, async: false

  alias Drove.Test.{DurablePeer, SupPeer}
  alias Drove.TestCluster, as: C

  @moduletag :capture_log

  test "the entry is on another member when start_child answers, placed here or there" do
    [n1, n2] = C.start_nodes(2, apps: [:drove])
    sup = :durable_sup
    members = for n <- [n1, n2], do: {sup, n}

    for n <- [n1, n2] do
      C.rpc(n, SupPeer, :start, [
        sup,
        [members: members, distribution_strategy: Drove.Test.PinStrategy]
      ])
    end

    C.wait_until(fn -> Enum.all?([n1, n2], &C.rpc(&1, SupPeer, :all_alive?, [sup, 2])) end)

    for i <- 1..20 do
      # placed on n2, called from n1: n1's replica has it when the answer comes
      assert {{:ok, pid}, true, _} =
               C.rpc(n1, DurablePeer, :start_and_look, [sup, n2, n2, :"dur_there_#{i}"])

      assert node(pid) == n2

      # placed on n1 itself: n2 has it when the answer comes
      assert {{:ok, pid}, true, true} =
               C.rpc(n1, DurablePeer, :start_and_look, [sup, n1, n2, :"dur_here_#{i}"])

      assert node(pid) == n1
    end

    # the caller's node cannot take the entry in (its instance is suspended): start_child
    # does not answer, though the child runs on n2; once it can, it answers, and the entry
    # is there
    :ok = :sys.suspend({sup, n1})
    :ok = C.rpc(n1, DurablePeer, :start_async, [sup, n2, :dur_held, self()])
    C.wait_until(fn -> C.rpc(n2, Process, :whereis, [:dur_held]) != nil end)

    # the caller waits in its call to n1's suspended instance (queued there), the only way
    # to its answer: no answer has come, nor can come before the resume
    instance = C.rpc(n1, Process, :whereis, [sup])

    C.wait_until(fn ->
      {:messages, msgs} = C.rpc(n1, Process, :info, [instance, :messages])
      Enum.any?(msgs, &match?({:"$gen_call", _, {:await_entry, _, ^n2}}, &1))
    end)

    refute_received {:returned, _}
    :ok = :sys.resume({sup, n1})
    assert_receive {:started, {:ok, pid}, true}, 5000
    assert node(pid) == n2
  end
end

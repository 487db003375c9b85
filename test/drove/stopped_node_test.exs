defmodule Drove.StoppedNodeTest do
  # Sagents' "agents are redistributed when a node stops" scenario: a process registered on
  # node1; node1 is stopped (:peer.stop); at once the runner asks node2. node2 must not answer
  # node1's dead pid, though its runtime may not have handled node1's nodedown yet.
  #   * a confirmed lookup (confirm: true) asks node1 and is asked the moment :peer.stop/1
  #     returns, when node1 may not have closed its connection to node2 yet;
  #   * a plain lookup (no round trip) is asked once node1's OS process has exited: then
  #     Drove.Liveness sees the end of the stream in node2's socket.
  use ExUnit.Case, async: false

  alias Drove.Test.RegistryPeer
  alias Drove.TestCluster, as: C

  @moduletag :capture_log
  @moduletag timeout: 300_000
  @runs 50

  test "no pid of a node that has just stopped, #{@runs} times in #{@runs}" do
    [n1, n2] = C.start_nodes(2, apps: [:drove])
    reg = :stopped_node_reg
    C.rpc(n2, RegistryPeer, :start, [reg, [members: :auto]])

    stale =
      for run <- 1..@runs, reduce: 0 do
        stale ->
          if run > 1, do: C.restart(n1, connect: [n2])
          C.rpc(n1, RegistryPeer, :start, [reg, [members: :auto]])
          key = {:agent, run}
          1 = C.rpc(n1, RegistryPeer, :start_many, [reg, key, 1..1])

          C.wait_until(fn ->
            match?([{_, _}], C.rpc(n2, Drove.Registry, :lookup, [reg, {key, 1}]))
          end)

          os_pid = C.rpc(n1, :os, :getpid, [])
          :ok = :peer.stop(C.Registry.get(n1).peer)
          confirmed = C.rpc(n2, Drove.Registry, :lookup, [reg, {key, 1}, [confirm: true]])

          # :peer.stop/1 returns when the runner's own connection drops, which may be before
          # node1 has closed its other ones; the plain lookup is asked once node1's process
          # has exited
          C.wait_until(fn -> exited?(os_pid) end, 5000, 1)
          plain = C.rpc(n2, Drove.Registry, :lookup, [reg, {key, 1}])
          stale + stale?(confirmed, n1) + stale?(plain, n1)
      end

    assert stale == 0
  end

  defp stale?([{pid, _}], stopped) when node(pid) == stopped, do: 1
  defp stale?(_none_or_survivor, _stopped), do: 0

  # The OS process has exited (gone, or a zombie whose files the kernel has closed).
  defp exited?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> stat |> String.split(") ") |> List.last() |> String.starts_with?("Z")
      {:error, _} -> true
    end
  end
end

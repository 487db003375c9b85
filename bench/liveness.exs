# What a lookup of a remote pid costs, with the liveness check that asks the kernel about the
# connection (Drove.Liveness), against the Node.list() check it replaced and against Horde's
# way (an :erpc round trip to the pid's node per remote lookup), in the same run; and the
# confirmed lookup (confirm: true, compat's Horde.Registry.lookup/2), which pays that round trip.
# Run: make bench BENCH=bench/liveness.exs
Code.require_file("bench_helper.exs", __DIR__)

Bench.ensure_distributed!()

IO.puts(
  "Liveness bench: #{:erlang.system_info(:logical_processors)} cores, OTP #{System.otp_release()}\n"
)

{_, peer} = p = Bench.start_peer(:"live_#{System.unique_integer([:positive])}")

{:ok, _} =
  Drove.Registry.start_link(name: :livebench, keys: :unique, members: [{:livebench, peer}])

remote_src = ~S"""
defmodule LiveBench.Remote do
  def setup(me) do
    parent = self()
    spawn(fn ->
      {:ok, _} = Drove.Registry.start_link(name: :livebench, keys: :unique, members: [{:livebench, me}])
      {:ok, _} = Drove.Registry.register(:livebench, :remote_key, nil)
      send(parent, :ready)
      Process.sleep(:infinity)
    end)
    receive do: (:ready -> :ok)
  end
end
"""

:erpc.call(peer, Code, :compile_string, [remote_src])
:ok = :erpc.call(peer, LiveBench.Remote, :setup, [node()])
Bench.wait_until(fn -> Drove.Registry.lookup(:livebench, :remote_key) != [] end)
[{remote_pid, nil}] = Drove.Registry.lookup(:livebench, :remote_key)

n = 100_000
rounds = 5

# ns per call: the median of `rounds` rounds of n calls
per_call = fn fun, n ->
  Bench.median(
    for _ <- 1..rounds,
        do: elem(:timer.tc(fn -> Enum.each(1..n, fn _ -> fun.() end) end), 0) * 1000 / n
  )
end

old = per_call.(fn -> :lists.member(peer, Node.list()) end, n)
new = per_call.(fn -> Drove.Liveness.node_up?(peer) end, n)
lookup = per_call.(fn -> Drove.Registry.lookup(:livebench, :remote_key) end, n)
rpc = per_call.(fn -> :erpc.call(peer, Process, :alive?, [remote_pid]) end, div(n, 20))

confirmed =
  per_call.(fn -> Drove.Registry.lookup(:livebench, :remote_key, confirm: true) end, div(n, 20))

Bench.row("node_up? (kernel-checked), ns", new, old, "Node.list() member, ns", "-")
Bench.row("Drove lookup of a remote pid, ns", lookup, rpc, ":erpc Process.alive?, ns", "-")
Bench.row("confirmed lookup (confirm: true), ns", confirmed, rpc, ":erpc Process.alive?, ns", "-")

Bench.stop_peer(p)

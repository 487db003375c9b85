# Two regions 50 ms apart (issue 17): how long a registration takes to be seen in the same
# region and in the other one, for Drove.Registry and :pg in the same run.
#
# Four peers; every connection between two of them runs through the fault-injecting proxy of
# the tests (test/support/wire.ex, compiled here for the peers), with WAN_LATENCY ms (50)
# added to each direction between region 1 (a, b) and region 2 (c, d). For WAN_ROUNDS (40)
# names, alternating Drove and :pg: a process on a registers one name, and waiters on b and
# c poll every millisecond until they see it; the times are from the moment the
# registration returned on a. Run: make bench BENCH=bench/wan.exs
Code.require_file("bench_helper.exs", __DIR__)

remote_src = ~S"""
defmodule WanBench.Remote do
  @scope :wan_pg
  @reg :wan

  # registers key from a new process that stays; the time the registration returned, us
  def register_one(kind, key) do
    parent = self()

    spawn(fn ->
      :ok = register(kind, key)
      send(parent, {:done, System.os_time(:microsecond)})
      receive do: (:stop -> :ok)
    end)

    receive do: ({:done, t} -> t)
  end

  defp register(:drove, key), do: elem(Drove.Registry.register(@reg, key, nil), 0)
  defp register(:pg, key), do: :pg.join(@scope, key, self())

  defp seen?(:drove, key), do: Drove.Registry.lookup(@reg, key) != []
  defp seen?(:pg, key), do: :pg.get_members(@scope, key) != []

  def wait_visible(kind, key) do
    if seen?(kind, key) do
      System.os_time(:microsecond)
    else
      Process.sleep(1)
      wait_visible(kind, key)
    end
  end
end
"""

latency = String.to_integer(System.get_env("WAN_LATENCY", "50"))
rounds = String.to_integer(System.get_env("WAN_ROUNDS", "40"))

Bench.ensure_distributed!()

# the proxy and the peers' epmd module, compiled where the peers can load them
dir = Path.join(System.tmp_dir!(), "drove_wan_bench_#{System.unique_integer([:positive])}")
File.mkdir_p!(dir)
wire = Path.expand("../test/support/wire.ex", __DIR__)
{:ok, _, _} = Kernel.ParallelCompiler.compile_to_path([wire], dir)
true = Code.prepend_path(dir)
alias Drove.Test.Wire

IO.puts("WAN bench: #{latency} ms one way between two regions of 2 nodes, #{rounds} names\n")

args =
  Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
    [~c"-setcookie", Atom.to_charlist(Node.get_cookie())] ++
    [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false"] ++
    [~c"-connect_all", ~c"false"] ++
    Enum.map(Wire.peer_args(1024), &String.to_charlist/1)

peers =
  for i <- 1..4 do
    {:ok, pid, node} =
      :peer.start(%{
        name: :"wan#{i}_#{System.unique_integer([:positive])}",
        host: ~c"127.0.0.1",
        longnames: true,
        args: args
      })

    {pid, node}
  end

[a, b, c, d] = nodes = Enum.map(peers, &elem(&1, 1))

try do
  for x <- [a, b], y <- [c, d], do: Wire.set_both(x, y, latency: latency)
  Enum.each(nodes, &({:ok, _} = :erpc.call(&1, Application, :ensure_all_started, [:drove])))
  :erpc.multicall(nodes, Code, :compile_string, [remote_src])
  Bench.load_remote(nodes)
  r = WanBench.Remote
  true = Enum.all?(nodes, &:erpc.call(&1, Bench.Remote, :connect, [nodes]))
  true = Enum.all?(for x <- nodes, y <- nodes, x < y, do: Wire.connections(x, y) == 1)
  members = for nd <- nodes, do: {:wan, nd}

  Enum.each(
    nodes,
    &:erpc.call(&1, Bench.Remote, :start_registry_and_pg, [:wan, :wan_pg, members])
  )

  Bench.wait_until(fn ->
    Enum.all?(nodes, &(:erpc.call(&1, Bench.Remote, :neighbours_up, [:wan]) == 3))
  end)

  Process.sleep(1_000)

  samples =
    for i <- 1..rounds, kind <- if(rem(i, 2) == 0, do: [:drove, :pg], else: [:pg, :drove]) do
      key = {:wan, i}

      waiters =
        for n <- [b, c],
            do: Task.async(fn -> :erpc.call(n, r, :wait_visible, [kind, key], 30_000) end)

      t0 = :erpc.call(a, r, :register_one, [kind, key])
      [tb, tc] = Enum.map(waiters, &Task.await(&1, 30_000))
      {kind, (tb - t0) / 1000, (tc - t0) / 1000}
    end

  for kind <- [:drove, :pg] do
    same = for {^kind, s, _} <- samples, do: s
    other = for {^kind, _, o} <- samples, do: o

    IO.puts(
      "#{kind}: seen in the same region median #{Float.round(Bench.median(same), 2)} ms " <>
        "(p90 #{Float.round(Bench.percentile(same, 90), 2)}), in the other region median " <>
        "#{Float.round(Bench.median(other), 2)} ms (p90 #{Float.round(Bench.percentile(other, 90), 2)}, " <>
        "latency #{latency} ms)"
    )
  end
after
  Enum.each(peers, fn {pid, _} ->
    try do
      :peer.stop(pid)
    catch
      :exit, _ -> :ok
    end
  end)

  File.rm_rf!(dir)
end

# Drove.DynamicSupervisor benchmarks, each against a reference run in the same script:
#   1. start_child on one node vs OTP's DynamicSupervisor.start_child (what it wraps);
#   2. a membership change with 20,000 children vs the same change with none (the cost of a
#      change must not grow with the number of children that do not move);
#   3. replica memory per child;
#   4. failover on 3 peers (SUPBENCH_PER_NODE children started through each, default 4000):
#      time from a node kill until every one of its children runs again
#      on the survivors, vs starting as many children afresh on one node;
#   5. graceful stop: time from :init.stop until its children run on the survivors.
# Run: make bench BENCH=bench/supervisor.exs
Code.require_file("bench_helper.exs", __DIR__)

remote_src = ~S"""
defmodule SupBench.Worker do
  use GenServer
  def start_link(arg), do: GenServer.start_link(__MODULE__, arg)
  @impl true
  def init(arg), do: {:ok, arg}
end

defmodule SupBench.Remote do

  def start_children(name, range) do
    for i <- range do
      {:ok, _} = Drove.DynamicSupervisor.start_child(name, %{id: i, start: {SupBench.Worker, :start_link, [i]}})
    end
    :ok
  end

  def local_count(name), do: DynamicSupervisor.count_children(:"#{name}.ProcessesSupervisor").active

  # start n plain children on a fresh local OTP DynamicSupervisor: the reference cost
  def plain_starts(n) do
    {:ok, sup} = DynamicSupervisor.start_link(strategy: :one_for_one)
    {us, _} = :timer.tc(fn ->
      for i <- 1..n, do: {:ok, _} = DynamicSupervisor.start_child(sup, %{id: i, start: {SupBench.Worker, :start_link, [i]}})
    end)
    Supervisor.stop(sup)
    us
  end
end
"""

Code.compile_string(remote_src)
Bench.ensure_distributed!()
{:ok, _} = Application.ensure_all_started(:drove)

IO.puts("== Drove.DynamicSupervisor (medians; 2 vCPU) ==")

# ---------------------------------------------------------------- 1. start_child, one node
n = 2000

child = fn i -> %{id: i, start: {SupBench.Worker, :start_link, [i]}} end

drove_us =
  for round <- 1..5 do
    name = :"supbench_#{round}"
    {:ok, top} = Drove.DynamicSupervisor.start_link(name: name, strategy: :one_for_one)

    {us, _} =
      :timer.tc(fn ->
        for i <- 1..n, do: {:ok, _} = Drove.DynamicSupervisor.start_child(name, child.(i))
      end)

    Supervisor.stop(top)
    us / n
  end
  |> Bench.median()

otp_us =
  for _ <- 1..5 do
    {:ok, sup} = DynamicSupervisor.start_link(strategy: :one_for_one)

    {us, _} =
      :timer.tc(fn ->
        for i <- 1..n, do: {:ok, _} = DynamicSupervisor.start_child(sup, child.(i))
      end)

    Supervisor.stop(sup)
    us / n
  end
  |> Bench.median()

Bench.row(
  "start_child, 1 node (us/child)",
  Float.round(drove_us, 2),
  Float.round(otp_us, 2),
  "OTP DynamicSupervisor",
  "report"
)

# ---------------------------------------------------------------- 2. membership change
big = 20_000
{:ok, top} = Drove.DynamicSupervisor.start_link(name: :supbench_big, strategy: :one_for_one)
{:ok, top0} = Drove.DynamicSupervisor.start_link(name: :supbench_empty, strategy: :one_for_one)
for i <- 1..big, do: {:ok, _} = Drove.DynamicSupervisor.start_child(:supbench_big, child.(i))

change = fn name ->
  ghosts = for g <- 1..3, do: {name, :"ghost#{g}@127.0.0.1"}

  add =
    elem(:timer.tc(fn -> :ok = Drove.Cluster.set_members(name, [{name, node()} | ghosts]) end), 0)

  drop = elem(:timer.tc(fn -> :ok = Drove.Cluster.set_members(name, [{name, node()}]) end), 0)
  add + drop
end

with_children = Bench.median(for _ <- 1..7, do: change.(:supbench_big))
without = Bench.median(for _ <- 1..7, do: change.(:supbench_empty))

Bench.row(
  "membership change, 20k children (us)",
  with_children,
  without,
  "same, no children",
  "ratio ~1"
)

# ---------------------------------------------------------------- 3. memory per child
{_, handle} = Drove.Handles.lookup(:supbench_big)
info = Drove.Native.info(handle)

spec_bytes =
  byte_size(Drove.Native.value({{:supbench_big, node()}, child.(1), self()})) +
    byte_size(Drove.Native.key({:child, 2 ** 127}))

per_child = div(info.memory, big)
Bench.row("replica bytes per child (20k)", per_child, spec_bytes, "its key+value bytes", "report")
Supervisor.stop(top)
Supervisor.stop(top0)

# ---------------------------------------------------------------- 4, 5. failover and handoff
# 4,000 children per node: the failover target of issue 16 is ~4,000 children in <= 500 ms
per_node = String.to_integer(System.get_env("SUPBENCH_PER_NODE", "4000"))
sup = :supbench_cluster

run_cluster = fn fault, size, per_node ->
  peers =
    for i <- 1..size, do: Bench.start_peer(:"supb#{i}_#{System.unique_integer([:positive])}")

  nodes = Enum.map(peers, &elem(&1, 1))
  [a | _] = nodes
  c = List.last(nodes)
  survivors = nodes -- [c]
  Enum.each(nodes, &:erpc.call(&1, Code, :compile_string, [remote_src]))
  members = for n <- nodes, do: {sup, n}
  Enum.each(nodes, &:erpc.call(&1, Bench.Remote, :start_sup, [sup, members]))

  Bench.wait_until(fn ->
    Enum.all?(nodes, &:erpc.call(&1, Bench.Remote, :sup_alive?, [sup, size]))
  end)

  total = size * per_node
  # started through every node at once
  nodes
  |> Enum.with_index()
  |> Enum.map(fn {n, i} ->
    Task.async(fn ->
      :erpc.call(
        n,
        SupBench.Remote,
        :start_children,
        [sup, (i * per_node + 1)..((i + 1) * per_node)],
        600_000
      )
    end)
  end)
  |> Enum.each(&Task.await(&1, 600_000))

  Bench.wait_until(fn ->
    Enum.sum(for n <- nodes, do: :erpc.call(n, SupBench.Remote, :local_count, [sup])) == total
  end)

  on_c = :erpc.call(c, SupBench.Remote, :local_count, [sup])

  t0 = System.monotonic_time(:microsecond)

  case fault do
    :kill -> :erpc.cast(c, :erlang, :halt, [137, [flush: false]])
    :stop -> :erpc.cast(c, :init, :stop, [])
  end

  timeline =
    Enum.reduce_while(1..100_000, [], fn _, acc ->
      now = System.monotonic_time(:microsecond)

      count =
        Enum.sum(for n <- survivors, do: :erpc.call(n, SupBench.Remote, :local_count, [sup]))

      acc = [{div(now - t0, 1000), count} | acc]

      if count == total,
        do: {:halt, acc},
        else:
          (
            Process.sleep(5)
            {:cont, acc}
          )
    end)

  if System.get_env("SUPBENCH_TIMELINE"),
    do: IO.inspect(Enum.reverse(timeline) |> Enum.dedup_by(&elem(&1, 1)), limit: :infinity)

  t1 = System.monotonic_time(:microsecond)
  reference = :erpc.call(a, SupBench.Remote, :plain_starts, [on_c], 60_000)

  Enum.each(peers, fn p ->
    try do
      Bench.stop_peer(p)
    catch
      _, _ -> :ok
    end
  end)

  {(t1 - t0) / 1000, reference / 1000, on_c}
end

# the median of 3 runs of one fault
report = fn fault, label ->
  {ms, ref, moved} = Enum.at(Enum.sort(for _ <- 1..3, do: run_cluster.(fault, 3, per_node)), 1)

  Bench.row(
    "#{label} -> #{moved} back (ms)",
    Float.round(ms, 1),
    Float.round(ref, 1),
    "#{moved} plain local starts",
    "report"
  )
end

report.(:kill, "failover: kill")
report.(:stop, "handoff: :init.stop")

# 2 nodes, 20,000 children, B halted: its children run again on A.
{ms, ref, moved} = run_cluster.(:kill, 2, 10_000)

Bench.row(
  "failover, 2 nodes: kill -> #{moved} back (ms)",
  Float.round(ms, 1),
  Float.round(ref, 1),
  "#{moved} plain local starts",
  "report"
)

# State handoff (issue 21): the cost of a graceful stop of one of 3 peers when its children
# hand their state over, against the same stop when they do not, in the same run.
#
# Each run starts 3 peers and HANDOFF_PER_NODE children through each (GenServers holding a
# 1 KB binary; `handoff: true` or not), stops one peer with :init.stop/0, and measures the
# time until every one of its children runs again on the survivors and, with handoff, holds
# its state (each new instance counts the state it received in an :atomics shared on its
# node). Medians of 3 runs of each.
# Run: make bench BENCH=bench/handoff.exs  (HANDOFF_PER_NODE, default 1000)
Code.require_file("bench_helper.exs", __DIR__)

remote_src = ~S"""
defmodule HandoffBench.Worker do
  use GenServer
  def start_link(i, answer), do: GenServer.start_link(__MODULE__, {i, answer})
  @impl true
  def init({i, answer}), do: {:ok, %{i: i, answer: answer, blob: :binary.copy(<<i::32>>, 256)}}
  @impl true
  def handle_call({:drove, :begin_handoff}, _from, %{answer: :restart} = s),
    do: {:reply, :restart, s}

  def handle_call({:drove, :begin_handoff}, _from, s), do: {:reply, {:resume, s}, s}
  @impl true
  def handle_cast({:drove, :end_handoff, s}, _fresh) do
    :atomics.add(:persistent_term.get(:handoff_bench_delivered), 1, 1)
    {:noreply, s}
  end
end

defmodule HandoffBench.Remote do
  def start_sup(name, members) do
    :persistent_term.put(:handoff_bench_delivered, :atomics.new(1, []))
    Bench.Remote.start_sup(name, members)
  end

  def start_children(name, range, kind) do
    for i <- range do
      spec = %{
        id: i,
        start: {HandoffBench.Worker, :start_link, [i, kind]},
        handoff: kind != :none
      }
      {:ok, _} = Drove.DynamicSupervisor.start_child(name, spec)
    end
    :ok
  end

  def local_count(name), do: DynamicSupervisor.count_children(:"#{name}.ProcessesSupervisor").active
  def delivered, do: :atomics.get(:persistent_term.get(:handoff_bench_delivered), 1)
end
"""

Code.compile_string(remote_src)
Bench.ensure_distributed!()
{:ok, _} = Application.ensure_all_started(:drove)

per_node = String.to_integer(System.get_env("HANDOFF_PER_NODE", "1000"))
sup = :handoffbench

IO.puts("== state handoff on a graceful stop (medians of 3; 2 vCPU) ==")

# the sum over the survivors of a counter: children running, states delivered
count = fn survivors, f, args ->
  Enum.sum(for n <- survivors, do: :erpc.call(n, HandoffBench.Remote, f, args))
end

# kind: :none (no handoff: true), :restart (asked, answers :restart), :resume (hands over)
run = fn kind ->
  peers = for i <- 1..3, do: Bench.start_peer(:"hob#{i}_#{System.unique_integer([:positive])}")

  nodes = Enum.map(peers, &elem(&1, 1))
  c = List.last(nodes)
  survivors = nodes -- [c]
  Enum.each(nodes, &:erpc.call(&1, Code, :compile_string, [remote_src]))
  members = for n <- nodes, do: {sup, n}
  Enum.each(nodes, &:erpc.call(&1, HandoffBench.Remote, :start_sup, [sup, members]))

  Bench.wait_until(fn ->
    Enum.all?(nodes, &:erpc.call(&1, Bench.Remote, :sup_alive?, [sup, 3]))
  end)

  total = 3 * per_node

  nodes
  |> Enum.with_index()
  |> Enum.map(fn {n, i} ->
    Task.async(fn ->
      range = (i * per_node + 1)..((i + 1) * per_node)
      :erpc.call(n, HandoffBench.Remote, :start_children, [sup, range, kind], 600_000)
    end)
  end)
  |> Enum.each(&Task.await(&1, 600_000))

  Bench.wait_until(fn -> count.(nodes, :local_count, [sup]) == total end)

  on_c = :erpc.call(c, HandoffBench.Remote, :local_count, [sup])
  t0 = System.monotonic_time(:microsecond)
  :erpc.cast(c, :init, :stop, [])

  Bench.wait_until(
    fn ->
      count.(survivors, :local_count, [sup]) == total and
        (kind != :resume or count.(survivors, :delivered, []) == on_c)
    end,
    120_000
  )

  ms = (System.monotonic_time(:microsecond) - t0) / 1000
  delivered = count.(survivors, :delivered, [])

  Enum.each(peers, fn p ->
    try do
      Bench.stop_peer(p)
    catch
      _, _ -> :ok
    end
  end)

  {ms, on_c, delivered}
end

# alternate the kinds so that a drift in the machine's load hits all of them
runs = for _ <- 1..3, kind <- [:resume, :none, :restart], do: {kind, run.(kind)}

median = fn kind ->
  results = for {^kind, r} <- runs, do: r
  IO.puts("#{kind} (ms, moved, states delivered): #{inspect(results)}")
  Bench.median(for {ms, _, _} <- results, do: ms)
end

[resume, none, restart] = Enum.map([:resume, :none, :restart], median)

Bench.row(
  "stop, #{per_node}/node, states handed over (ms)",
  Float.round(resume, 1),
  Float.round(none, 1),
  "the same stop, no handoff",
  "report"
)

Bench.row(
  "stop, #{per_node}/node, asked, :restart (ms)",
  Float.round(restart, 1),
  Float.round(none, 1),
  "the same stop, no handoff",
  "report"
)

# Memory that follows the load (issue 20), against an ETS table in the same run, one node:
#   1. a registry: N processes register one name each, then all exit;
#   2. a Drove.CRDT: N keys put, then all deleted (three rounds: grow, shrink, grow again);
#   3. a distributed dynamic supervisor: C children started, then all terminated;
#   4. the cost of shrinking: the tail of the time of single deletes while a CRDT of N keys
#      empties (the shrink and evacuation steps run inside deletes), against :ets.delete's.
#      The step's own cost, without the VM's noise, is measured in C: make bench-shrink.
# Each figure is `info(...).memory` (bytes the replica holds in C: tables, slab, context) at
# the peak and after; ETS is :ets.info(t, :memory) in bytes. N = 200_000 unless MEM_N is set.
# Run: make bench BENCH=bench/memory.exs
Code.require_file("bench_helper.exs", __DIR__)

defmodule MemBench do
  @word :erlang.system_info(:wordsize)

  def n, do: String.to_integer(System.get_env("MEM_N", "200000"))
  def children, do: String.to_integer(System.get_env("MEM_CHILDREN", "20000"))

  def mb(bytes), do: Float.round(bytes / 1_000_000, 2)

  def ets_mem(t), do: :ets.info(t, :memory) * @word

  def rss_mb do
    case File.read("/proc/self/status") do
      {:ok, s} ->
        [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, s)
        Float.round(String.to_integer(kb) / 1000, 1)

      _ ->
        0.0
    end
  end

  # ETS rows shaped like the registry's entries: {key, pid, value}
  def ets_round(n) do
    t = :ets.new(:mem_ref, [:set, :public])
    pid = self()
    for i <- 1..n, do: :ets.insert(t, {{:name, i}, pid, nil})
    peak = ets_mem(t)
    for i <- 1..n, do: :ets.delete(t, {:name, i})
    after_ = ets_mem(t)
    :ets.delete(t)
    {peak, after_}
  end

  def registry_round(reg, n) do
    parent = self()
    # the registry's own entries (its membership) stay
    base = Drove.Registry.info(reg).size

    pids =
      for i <- 1..n do
        spawn(fn ->
          {:ok, _} = Drove.Registry.register(reg, {:name, i}, nil)
          send(parent, :registered)
          receive do: (:stop -> :ok)
        end)
      end

    for _ <- 1..n, do: receive(do: (:registered -> :ok))
    peak = Drove.Registry.info(reg).memory
    refs = Enum.map(pids, &Process.monitor/1)
    Enum.each(pids, &send(&1, :stop))
    for ref <- refs, do: receive(do: ({:DOWN, ^ref, _, _, _} -> :ok))

    Bench.wait_until(fn ->
      Drove.Registry.count(reg) == 0 and Drove.Registry.info(reg).size == base
    end)

    {peak, Drove.Registry.info(reg).memory}
  end

  def crdt_round(crdt, n) do
    for i <- 1..n, do: Drove.CRDT.put(crdt, {:k, i}, i)
    peak = Drove.CRDT.info(crdt).memory
    for i <- 1..n, do: Drove.CRDT.delete(crdt, {:k, i})
    {peak, Drove.CRDT.info(crdt).memory}
  end

  # the time (us) of each of n deletes that empty a map of n keys, sorted
  def delete_times(del, n) do
    Enum.map(1..n, fn i -> elem(:timer.tc(fn -> del.(i) end), 0) end) |> Enum.sort()
  end

  def tail(sorted) do
    n = length(sorted)
    at = fn q -> Enum.at(sorted, min(n - 1, round(q * (n - 1)))) end

    %{
      p50: at.(0.5),
      p999: at.(0.999),
      p9999: at.(0.9999),
      max: List.last(sorted),
      over_1ms: Enum.count(sorted, &(&1 > 1000))
    }
  end

  def shrink_cost(n) do
    name = :"mem_shrink_#{System.unique_integer([:positive])}"
    {:ok, _} = Drove.CRDT.start_link(name: name)
    for i <- 1..n, do: Drove.CRDT.put(name, {:k, i}, i)
    d = delete_times(&Drove.CRDT.delete(name, {:k, &1}), n) |> tail()
    GenServer.stop(name)

    t = :ets.new(:mem_ref2, [:set, :public])
    for i <- 1..n, do: :ets.insert(t, {{:k, i}, i})
    e = delete_times(&:ets.delete(t, {:k, &1}), n) |> tail()
    :ets.delete(t)
    {d, e}
  end

  def sup_round(sup, c) do
    base = GenServer.call(sup, :info).size

    pids =
      for i <- 1..c do
        {:ok, pid} =
          Drove.DynamicSupervisor.start_child(sup, %{
            id: i,
            start: {Agent, :start_link, [fn -> i end]}
          })

        pid
      end

    peak = GenServer.call(sup, :info).memory
    for pid <- pids, do: :ok = Drove.DynamicSupervisor.terminate_child(sup, pid)
    Bench.wait_until(fn -> GenServer.call(sup, :info).size == base end)
    {peak, GenServer.call(sup, :info).memory}
  end
end

n = MemBench.n()
IO.puts("memory bench: N = #{n}, RSS at start #{MemBench.rss_mb()} MB")

{ets_peak, ets_after} = MemBench.ets_round(n)
IO.puts("ETS reference, #{n} rows: peak #{MemBench.mb(ets_peak)} MB, after delete #{ets_after} B")

reg = :mem_bench_reg
{:ok, _} = Drove.Registry.start_link(name: reg, keys: :unique, members: :auto)

for round <- 1..3 do
  {peak, after_} = MemBench.registry_round(reg, n)

  IO.puts(
    "registry round #{round}: #{n} names peak #{MemBench.mb(peak)} MB, after all exit " <>
      "#{MemBench.mb(after_)} MB (#{after_} B); ETS #{MemBench.mb(ets_peak)} MB -> #{ets_after} B; " <>
      "RSS #{MemBench.rss_mb()} MB"
  )
end

{:ok, _} = Drove.CRDT.start_link(name: :mem_bench_crdt)

for round <- 1..3 do
  {peak, after_} = MemBench.crdt_round(:mem_bench_crdt, n)

  IO.puts(
    "crdt round #{round}: #{n} keys peak #{MemBench.mb(peak)} MB, after delete " <>
      "#{MemBench.mb(after_)} MB (#{after_} B); RSS #{MemBench.rss_mb()} MB"
  )
end

c = MemBench.children()

{:ok, _} =
  Drove.DynamicSupervisor.start_link(name: :mem_bench_sup, strategy: :one_for_one, members: :auto)

{sp, sa} = MemBench.sup_round(:mem_bench_sup, c)

IO.puts(
  "supervisor: #{c} children peak #{MemBench.mb(sp)} MB, after all terminated " <>
    "#{MemBench.mb(sa)} MB (#{sa} B)"
)

costs =
  for _ <- 1..3 do
    {d, e} = MemBench.shrink_cost(n)

    IO.puts(
      "emptying #{n} keys, us per delete: Drove p50 #{d.p50} p99.9 #{d.p999} p99.99 #{d.p9999} " <>
        "max #{d.max} (#{d.over_1ms} over 1 ms); :ets.delete p50 #{e.p50} p99.9 #{e.p999} " <>
        "p99.99 #{e.p9999} max #{e.max} (#{e.over_1ms} over 1 ms)"
    )

    {d, e}
  end

med = fn f -> Bench.median(Enum.map(costs, f)) end

IO.puts(
  "median of 3: Drove p99.99 #{med.(&elem(&1, 0).p9999)} us, max #{med.(&elem(&1, 0).max)} us; " <>
    ":ets.delete p99.99 #{med.(&elem(&1, 1).p9999)} us, max #{med.(&elem(&1, 1).max)} us; " <>
    "RSS at end #{MemBench.rss_mb()} MB"
)

# Drove.CRDT benchmarks: local put/get vs ETS, memory, single-put latency vs a plain message,
# bulk propagation and catch-up vs a raw batched ETS copy over distribution.
# Run: make bench BENCH=bench/crdt.exs   (or: elixir --name b@127.0.0.1 -S mix run bench/crdt.exs)
Code.require_file("bench_helper.exs", __DIR__)

defmodule CrdtBench.Local do
  @moduledoc false
  def puts(c, n), do: Enum.each(1..n, fn i -> Drove.CRDT.put(c, i, {:v, i}) end)
  def gets(c, n), do: Enum.each(1..n, fn i -> Drove.CRDT.get(c, i) end)
  def ets_inserts(t, n), do: Enum.each(1..n, fn i -> :ets.insert(t, {i, {:v, i}}) end)
  def ets_lookups(t, n), do: Enum.each(1..n, fn i -> :ets.lookup(t, i) end)
end

# Compiled on each peer: bench modules are not on the peers' code path.
remote_src = ~S"""
defmodule CrdtBench.Remote do
  def start(name, neighbours, on_diffs \\ nil) do
    opts = [name: name, neighbours: neighbours, on_diffs: on_diffs]
    {:ok, pid} = GenServer.start(Drove.CRDT, opts, name: name)
    pid
  end

  def write(name, n, tag) do
    Enum.each(1..n, fn i -> Drove.CRDT.put(name, {tag, i}, i) end)
    System.os_time(:microsecond)
  end

  # polls every millisecond until the replica holds n keys; the wall time (us) it happened.
  # (A spinning waiter would take one of the 2 cores from the joins it waits for.)
  def wait_size(name, n) do
    {_, h} = Drove.Handles.lookup(name)
    poll(h, n)
  end

  defp poll(h, n) do
    if Drove.Native.info(h).size >= n do
      System.os_time(:microsecond)
    else
      Process.sleep(1)
      poll(h, n)
    end
  end

  # a process that timestamps each key it is told about
  def stamper, do: spawn(fn -> stamp_loop(%{}) end)
  def on_diffs(stamper, diffs), do: send(stamper, {:diffs, diffs})

  defp stamp_loop(acc) do
    receive do
      {:get, from} ->
        send(from, {:stamps, acc})
        stamp_loop(%{})

      {:diffs, d} ->
        t = System.os_time(:microsecond)
        stamp_loop(Enum.reduce(d, acc, fn {:add, k, _}, a -> Map.put_new(a, k, t); _, a -> a end))

      {:ping, k} ->
        stamp_loop(Map.put(acc, k, System.os_time(:microsecond)))
    end
  end

  # put one key at a time, 1 ms apart; the wall time of each put
  def latency_puts(name, samples) do
    for i <- 1..samples do
      t0 = System.os_time(:microsecond)
      Drove.CRDT.put(name, {:single, i}, i)
      Process.sleep(1)
      {{:single, i}, t0}
    end
  end

  def latency_pings(dest, samples) do
    for i <- 1..samples do
      t0 = System.os_time(:microsecond)
      send(dest, {:ping, {:ping, i}})
      Process.sleep(1)
      {{:ping, i}, t0}
    end
  end

  # reference for bulk transfer: batches of {k, v} sent to an ETS-inserting process
  def raw_sink(n, notify) do
    spawn(fn -> raw_loop(:ets.new(:sink, [:set]), n, notify) end)
  end

  defp raw_loop(t, n, notify) do
    receive do
      {:batch, list} ->
        :ets.insert(t, list)
        if :ets.info(t, :size) >= n, do: send(notify, {:raw_done, node(), System.os_time(:microsecond)})
        raw_loop(t, n, notify)
    end
  end

  def raw_send(sinks, n, batch) do
    1..n
    |> Stream.chunk_every(batch)
    |> Enum.each(fn chunk ->
      list = Enum.map(chunk, &{{:raw, &1}, &1})
      Enum.each(sinks, &send(&1, {:batch, list}))
    end)

    System.os_time(:microsecond)
  end
end
"""

Bench.ensure_distributed!()
cores = :erlang.system_info(:logical_processors)

IO.puts(
  "Drove.CRDT bench: #{cores} cores, OTP #{System.otp_release()}, Elixir #{System.version()}\n"
)

# ---- 1. local put/get vs ETS ---------------------------------------------------------------
n = 100_000
runs = 7
{:ok, c} = Drove.CRDT.start_link(name: :bench_local)
t = :ets.new(:bench_ets, [:set, :public])
CrdtBench.Local.puts(c, n)
CrdtBench.Local.ets_inserts(t, n)
put_us = Bench.time_us(runs, fn -> CrdtBench.Local.puts(c, n) end) / n
ins_us = Bench.time_us(runs, fn -> CrdtBench.Local.ets_inserts(t, n) end) / n
get_us = Bench.time_us(runs, fn -> CrdtBench.Local.gets(c, n) end) / n
look_us = Bench.time_us(runs, fn -> CrdtBench.Local.ets_lookups(t, n) end) / n
IO.puts("== local operations on #{n} keys, median of #{runs} runs, us per operation")
Bench.row("Drove.CRDT.put", put_us, ins_us, ":ets.insert", "<= 3x")
Bench.row("Drove.CRDT.get", get_us, look_us, ":ets.lookup", "<= 3x")

# The same puts while the replica has a neighbour (a second replica on this node): each
# write is also logged for the eager push, which the replica process encodes and sends
# meanwhile. (Without neighbours nothing is logged: see Drove.Replicator.)
{:ok, nb} = Drove.CRDT.start_link(name: :bench_neighbour)
Drove.CRDT.set_neighbours(c, [nb])
Process.sleep(200)
put_nb_us = Bench.time_us(runs, fn -> CrdtBench.Local.puts(c, n) end) / n
ins_nb_us = Bench.time_us(runs, fn -> CrdtBench.Local.ets_inserts(t, n) end) / n
Bench.row("Drove.CRDT.put, with a neighbour", put_nb_us, ins_nb_us, ":ets.insert", "-")
Drove.CRDT.set_neighbours(c, [])
GenServer.stop(nb)

info = Drove.CRDT.info(c)
ets_bytes = :ets.info(t, :memory) * :erlang.system_info(:wordsize) / n
IO.puts("\n== memory with #{info.size} small entries, bytes per entry")

Bench.row(
  "replica, beyond key and value bytes",
  (info.memory - info.payload) / info.size,
  ets_bytes,
  "ETS row, everything",
  "<= 200"
)

GenServer.stop(c)
:ets.delete(t)

# ---- peers -----------------------------------------------------------------------------------
peers = for i <- 1..3, do: Bench.start_peer(:"crdtb#{i}_#{System.unique_integer([:positive])}")
[a, b, cnode] = Enum.map(peers, &elem(&1, 1))
Enum.each([a, b, cnode], &:erpc.call(&1, Code, :compile_string, [remote_src]))
r = CrdtBench.Remote

# ---- 2. one put: time until the neighbour's replica reports it ---------------------------------
samples = 500
stamper = :erpc.call(b, r, :stamper, [])
:erpc.call(b, r, :start, [:lat, [{:lat, a}], {r, :on_diffs, [stamper]}])
:erpc.call(a, r, :start, [:lat, [{:lat, b}]])
Process.sleep(300)
sent = :erpc.call(a, r, :latency_puts, [:lat, samples], 60_000)
pings = :erpc.call(a, r, :latency_pings, [stamper, samples], 60_000)
Process.sleep(100)
send(stamper, {:get, self()})
stamps = receive do: ({:stamps, s} -> s)
lat = for {k, t0} <- sent, Map.has_key?(stamps, k), do: (stamps[k] - t0) / 1000
ref = for {k, t0} <- pings, Map.has_key?(stamps, k), do: (stamps[k] - t0) / 1000
IO.puts("\n== one put seen by a neighbour (#{length(lat)}/#{samples} samples), ms")

Bench.row(
  "Drove put -> neighbour on_diffs, median",
  Bench.median(lat),
  Bench.median(ref),
  "plain message, median",
  "<= 1 ms"
)

Bench.row(
  "Drove put -> neighbour on_diffs, p99",
  Bench.percentile(lat, 99),
  Bench.percentile(ref, 99),
  "plain message, p99",
  "<= 10 ms"
)

# ---- 3. 100k writes on one node, visible on 2 others ------------------------------------------
bulk = 100_000
:erpc.call(a, r, :start, [:bulk, [{:bulk, b}, {:bulk, cnode}]])
:erpc.call(b, r, :start, [:bulk, [{:bulk, a}, {:bulk, cnode}]])
:erpc.call(cnode, r, :start, [:bulk, [{:bulk, a}, {:bulk, b}]])
Process.sleep(300)

waits =
  for n <- [b, cnode],
      do: Task.async(fn -> :erpc.call(n, r, :wait_size, [:bulk, bulk], 120_000) end)

# The writer's node stamps its first write (and the first send of the reference): both clocks
# are this machine's, so "from the first write" is the whole transfer, writing included.
t_start = :erpc.call(a, System, :os_time, [:microsecond])
t_last = :erpc.call(a, r, :write, [:bulk, bulk, :bulk], 120_000)
t_seen = waits |> Enum.map(&Task.await(&1, 120_000)) |> Enum.max()
drove_ms = (t_seen - t_last) / 1000
drove_first_ms = (t_seen - t_start) / 1000
write_ms = (t_last - t_start) / 1000

sinks = for n <- [b, cnode], do: :erpc.call(n, r, :raw_sink, [bulk, self()])
r_start = :erpc.call(a, System, :os_time, [:microsecond])
r_last = :erpc.call(a, r, :raw_send, [sinks, bulk, 1000], 120_000)
r_seen = for _ <- sinks, do: receive(do: ({:raw_done, _, tt} -> tt))
raw_ms = (Enum.max(r_seen) - r_last) / 1000
raw_first_ms = (Enum.max(r_seen) - r_start) / 1000

IO.puts(
  "\n== #{bulk} writes on one node (#{Float.round(write_ms, 1)} ms to write, the reference " <>
    "#{Float.round((r_last - r_start) / 1000, 1)} ms to send), until 2 other nodes hold all, ms"
)

Bench.row(
  "Drove eager push, from the last write",
  drove_ms,
  raw_ms,
  "raw batched send + ETS",
  "<= 300 ms"
)

Bench.row(
  "Drove eager push, from the first write",
  drove_first_ms,
  raw_first_ms,
  "raw batched send + ETS",
  "-"
)

# ---- 4. a new node catches up a 1M-entry replica ----------------------------------------------
big = 1_000_000
:erpc.call(a, r, :write, [:bulk, big, :big], 300_000)
# both neighbours hold everything (and are idle) before the new node starts
for n <- [b, cnode] do
  Bench.wait_until(
    fn -> :erpc.call(n, Drove.CRDT, :info, [:bulk]).size >= big + bulk end,
    120_000
  )
end

{dpid, d} = Bench.start_peer(:"crdtb_new_#{System.unique_integer([:positive])}")
:erpc.call(d, Code, :compile_string, [remote_src])
t0 = System.os_time(:microsecond)
:erpc.call(d, r, :start, [:bulk, [{:bulk, a}]])
t1 = :erpc.call(d, r, :wait_size, [:bulk, big + bulk], 300_000)
catch_ms = (t1 - t0) / 1000
sink = :erpc.call(d, r, :raw_sink, [big + bulk, self()])
r0 = System.os_time(:microsecond)
:erpc.call(a, r, :raw_send, [[sink], big + bulk, 10_000], 300_000)
rt = receive do: ({:raw_done, _, tt} -> tt)
raw_catch_ms = (rt - r0) / 1000
IO.puts("\n== a new node catches up #{big + bulk} entries, ms")

Bench.row(
  "Drove anti-entropy catch-up",
  catch_ms,
  raw_catch_ms,
  "raw batched copy into ETS",
  "<= 2000 ms"
)

info = :erpc.call(a, Drove.CRDT, :info, [:bulk])

Bench.row(
  "replica bytes/entry beyond key+value (1.1M)",
  (info.memory - info.payload) / info.size,
  nil,
  "-",
  "<= 200"
)

Enum.each([{dpid, d} | peers], &Bench.stop_peer/1)

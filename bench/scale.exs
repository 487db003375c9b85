# Many nodes: registration time, idle traffic and failover against cluster size, with :pg
# measured in the same run on the same nodes (issue 17).
#
# For each size N (SCALE_NODES, default "4,8,16,32"): N peers on 127.0.0.1, each a member of
# one Drove.Registry and of one :pg scope. Then, for Drove and then for :pg:
#   visible  every node registers its share of SCALE_NAMES (32,000) names at once, one
#            process per name; the time from the start until every node holds all names;
# then 5 s with no change ("idle": bytes sent per node on its distribution connections to the
# other peers, from :inet.getstat of the ports in :erlang.system_info(:dist_ctrl)); then the
# last node halts and "gone" is the time until every survivor has dropped its names, for
# both kinds at once.
#
# Writes bench/scale.dat (one row per size) and, when gnuplot is installed, draws
# bench/scale.png from it. Run: make bench BENCH=bench/scale.exs
#   SCALE_NODES=4,8 make bench BENCH=bench/scale.exs   (smaller sizes only)
Code.require_file("bench_helper.exs", __DIR__)

remote_src = ~S"""
defmodule ScaleBench.Remote do
  @scope :scale_pg
  @reg :scale

  # the replicator's counters (nil when the registry does not answer in 30 s) and a hash of
  # the replica's context and digests: equal on every node once all hold the same
  def stats do
    {_, h} = Drove.Handles.lookup(@reg)
    state = :erlang.phash2({Drove.Native.ctx(h), Drove.Native.digest(h)})

    info =
      try do
        GenServer.call(@reg, :info, 30_000)
        |> Map.take([:rounds, :rounds_done, :rounds_same, :deltas_out, :bad_messages])
      catch
        :exit, _ -> nil
      end

    {:message_queue_len, q} = Process.info(Process.whereis(@reg), :message_queue_len)
    {state, info && Map.put(info, :queue, q)}
  end

  # spawns one process per name of range, each registering it; returns once all are done
  def register_share(kind, range) do
    parent = self()

    for i <- range do
      spawn(fn ->
        ok = register(kind, {kind, i})
        send(parent, {:reg, ok})
        receive do: (:stop -> :ok)
      end)
    end

    Enum.all?(range, fn _ -> receive do: ({:reg, ok} -> ok) end)
  end

  defp register(:drove, key), do: match?({:ok, _}, Drove.Registry.register(@reg, key, nil))
  defp register(:pg, key), do: :pg.join(@scope, key, self()) == :ok

  def size(:drove), do: :ets.info(:keys_scale, :size)
  def size(:pg), do: :ets.info(@scope, :size)

  # polls every 2 ms until size(kind) reaches n (or drops to n when down), wall time in us
  def wait_size(kind, n, down \\ false) do
    s = size(kind)

    if (down and s <= n) or (not down and s >= n) do
      System.os_time(:microsecond)
    else
      Process.sleep(2)
      wait_size(kind, n, down)
    end
  end

  # bytes sent on the distribution connections to the given nodes
  def sent_to(nodes) do
    for {n, port} when is_port(port) <- :erlang.system_info(:dist_ctrl), n in nodes, reduce: 0 do
      acc ->
        case :inet.getstat(port, [:send_oct]) do
          {:ok, [send_oct: b]} -> acc + b
          _ -> acc
        end
    end
  end
end
"""

defmodule ScaleBench do
  @names String.to_integer(System.get_env("SCALE_NAMES", "32000"))
  @idle_ms 5_000
  @r ScaleBench.Remote

  def names, do: @names

  def start_peer(i) do
    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        [~c"-setcookie", Atom.to_charlist(Node.get_cookie())] ++
        [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false"] ++
        [~c"-connect_all", ~c"false"]

    name = :"scale#{i}_#{System.unique_integer([:positive])}"

    {:ok, pid, node} =
      :peer.start(%{name: name, host: ~c"127.0.0.1", longnames: true, args: args})

    {pid, node}
  end

  def run(n, remote_src) do
    peers =
      1..n
      |> Task.async_stream(&start_peer/1, max_concurrency: 4, timeout: 120_000)
      |> Enum.map(fn {:ok, p} -> p end)

    nodes = Enum.map(peers, &elem(&1, 1))

    try do
      measure(nodes, remote_src)
    after
      Enum.each(peers, fn {pid, _} ->
        try do
          :peer.stop(pid)
        catch
          :exit, _ -> :ok
        end
      end)
    end
  end

  defp multicall(nodes, f, args, timeout \\ 300_000), do: remote_all(nodes, @r, f, args, timeout)

  defp remote_all(nodes, m, f, args, timeout \\ 300_000) do
    nodes
    |> :erpc.multicall(m, f, args, timeout)
    |> Enum.map(fn {:ok, v} -> v end)
  end

  defp measure(nodes, remote_src) do
    n = length(nodes)
    Enum.each(nodes, &({:ok, _} = :erpc.call(&1, Application, :ensure_all_started, [:drove])))
    :erpc.multicall(nodes, Code, :compile_string, [remote_src])
    Bench.load_remote(nodes)
    true = Enum.all?(remote_all(nodes, Bench.Remote, :connect, [nodes]))
    members = for nd <- nodes, do: {:scale, nd}
    remote_all(nodes, Bench.Remote, :start_registry_and_pg, [:scale, :scale_pg, members])

    Bench.wait_until(fn ->
      Enum.all?(remote_all(nodes, Bench.Remote, :neighbours_up, [:scale]), &(&1 == n - 1))
    end)

    Process.sleep(1_000)

    shares =
      Enum.zip(nodes, Enum.chunk_every(1..@names, div(@names + n - 1, n)) |> Enum.map(&range/1))

    visible = for kind <- [:drove, :pg], into: %{}, do: {kind, visible(kind, nodes, shares)}

    # idle: nothing changes; let the last rounds of the registration settle first
    Process.sleep(1_000)
    b0 = Enum.map(nodes, &:erpc.call(&1, @r, :sent_to, [nodes -- [&1]]))
    t0 = System.monotonic_time(:microsecond)
    Process.sleep(@idle_ms)
    b1 = Enum.map(nodes, &:erpc.call(&1, @r, :sent_to, [nodes -- [&1]]))
    secs = (System.monotonic_time(:microsecond) - t0) / 1.0e6
    rates = Enum.zip_with(b1, b0, &((&1 - &2) / secs))
    stats = multicall(nodes, :stats, [])

    # failover: the last node halts; every survivor drops its names
    {victim, vrange} = List.last(shares)
    survivors = nodes -- [victim]
    left = @names - Enum.count(vrange)
    waiters = for kind <- [:drove, :pg], nd <- survivors, do: {kind, waiter(nd, kind, left)}
    t_halt = System.os_time(:microsecond)
    :erpc.cast(victim, :erlang, :halt, [])

    gone =
      for {kind, t} <- waiters, reduce: %{drove: 0, pg: 0} do
        acc -> Map.update!(acc, kind, &max(&1, Task.await(t, :infinity) - t_halt))
      end

    %{
      nodes: n,
      visible_ms: Map.new(visible, fn {k, us} -> {k, us / 1000} end),
      idle_median: Bench.median(rates),
      idle_max: Enum.max(rates),
      idle_rates: rates,
      gone_ms: Map.new(gone, fn {k, us} -> {k, us / 1000} end),
      stats: stats
    }
  end

  defp range(list), do: List.first(list)..List.last(list)

  defp waiter(node, kind, n) do
    Task.async(fn -> :erpc.call(node, @r, :wait_size, [kind, n, true], :infinity) end)
  end

  defp visible(kind, nodes, shares) do
    waiters =
      for nd <- nodes,
          do: Task.async(fn -> :erpc.call(nd, @r, :wait_size, [kind, @names], :infinity) end)

    t0 = System.os_time(:microsecond)

    true =
      shares
      |> Enum.map(fn {nd, rg} ->
        Task.async(fn -> :erpc.call(nd, @r, :register_share, [kind, rg], :infinity) end)
      end)
      |> Enum.all?(&Task.await(&1, :infinity))

    Enum.map(waiters, &Task.await(&1, :infinity)) |> Enum.max() |> Kernel.-(t0)
  end
end

Bench.ensure_distributed!()

sizes =
  System.get_env("SCALE_NODES", "4,8,16,32")
  |> String.split(",", trim: true)
  |> Enum.map(&String.to_integer/1)

IO.puts(
  "Scale bench: #{:erlang.system_info(:logical_processors)} cores, OTP #{System.otp_release()}, " <>
    "#{ScaleBench.names()} names, sizes #{inspect(sizes)}\n"
)

results =
  for n <- sizes do
    r = ScaleBench.run(n, remote_src)
    kb = fn b -> Float.round(b / 1024, 2) end

    IO.puts(
      "#{n} nodes: all names visible: Drove #{Float.round(r.visible_ms.drove, 1)} ms, " <>
        ":pg #{Float.round(r.visible_ms.pg, 1)} ms (ratio " <>
        "#{Float.round(r.visible_ms.drove / r.visible_ms.pg, 2)})\n" <>
        "  idle sent per node: median #{kb.(r.idle_median)} KB/s, max #{kb.(r.idle_max)} KB/s " <>
        "(all: #{inspect(Enum.map(r.idle_rates, &round/1))} B/s)\n" <>
        "  halted node's names gone: Drove #{Float.round(r.gone_ms.drove, 1)} ms, " <>
        ":pg #{Float.round(r.gone_ms.pg, 1)} ms\n" <>
        "  replica states after the idle period: #{r.stats |> Enum.map(&elem(&1, 0)) |> Enum.uniq() |> length()} distinct\n" <>
        "  replicator counters: #{inspect(Enum.map(r.stats, &elem(&1, 1)), limit: :infinity)}"
    )

    r
  end

dat = Path.join(__DIR__, "scale.dat")

File.write!(
  dat,
  [
    "# nodes drove_visible_ms pg_visible_ms idle_median_Bps idle_max_Bps drove_gone_ms pg_gone_ms\n"
    | for r <- results do
        Enum.join(
          [
            r.nodes,
            r.visible_ms.drove,
            r.visible_ms.pg,
            r.idle_median,
            r.idle_max,
            r.gone_ms.drove,
            r.gone_ms.pg
          ],
          " "
        ) <> "\n"
      end
  ]
)

IO.puts("\nwrote #{dat}")

if System.find_executable("gnuplot") do
  {out, 0} =
    System.cmd("gnuplot", [Path.join(__DIR__, "scale.gp")], cd: __DIR__, stderr_to_stdout: true)

  IO.write(out)
  IO.puts("drew #{Path.join(__DIR__, "scale.png")}")
else
  IO.puts("gnuplot not installed (make setup-bench): no chart")
end

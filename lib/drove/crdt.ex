defmodule Drove.CRDT do
  @moduledoc """
  A replicated map: an add-wins, last-writer-wins delta-CRDT kept in C, with a
  DeltaCrdt-like API.

      {:ok, a} = Drove.CRDT.start_link(name: :cache_a, on_diffs: &IO.inspect/1)
      {:ok, b} = Drove.CRDT.start_link(name: :cache_b)
      Drove.CRDT.set_neighbours(a, [b])
      Drove.CRDT.put(a, :key, "value")
      Drove.CRDT.get(a, :key)   #=> "value" (at once, on the writing node)

  ## Semantics

    * Keys and values are any terms. Keys are compared by their canonical external
      format (`term_to_binary(key, [:deterministic, minor_version: 2])`), so equal terms
      are the same key on every node.
    * A put concurrent with a delete of the same key wins (add-wins). Concurrent puts are
      resolved by a hybrid logical clock (wall-clock milliseconds plus a counter), then by
      replica id, the same way on every node; on one node the later write wins.
    * Reads and local writes do not go through the replica process: they call the NIF
      directly, so a write is visible to readers on the same node when `put/3` returns.

  ## Replication

  Local writes are applied at once and coalesced into an outbox that the replica process
  pushes to every neighbour as a delta as soon as it runs (no timer). Every
  `:sync_interval` ms, and when a neighbour comes up, an anti-entropy round runs with
  each neighbour: contexts and bucket digests are exchanged and each side receives what it
  has not seen, in messages of at most `:max_message_bytes`. At most one round is in
  flight per neighbour. Each message is self-contained: losing one (a connection cut)
  never loses data, the next round repairs it.

  Replication goes both ways: a replica that receives from a process it does not list
  as a neighbour pushes its own writes back to it until that process exits or drops it.

  Messages from peers are validated in C; a bad one is logged, counted (see `info/1`)
  and ignored.

  ## Differences from DeltaCrdt

    * `on_diffs` for local writes runs in the replica process right after the write, not
      inside the `put/3` call. Remote changes are reported when joined.
    * `put(crdt, key, nil)` stores `nil` and is reported as `{:add, key, nil}`.
    * `:max_sync_size` (a key count in DeltaCrdt) is accepted and ignored; message size
      is bounded in bytes by `:max_message_bytes`.
    * The replica id is random per start; a restarted replica catches up from its
      neighbours.
  """
  use GenServer
  require Logger

  alias Drove.{Handles, Native}

  @type crdt :: GenServer.server()
  @type key :: term()
  @type value :: term()
  @type diff :: {:add, key(), value()} | {:remove, key()}
  @type on_diffs :: (list(diff()) -> any()) | {module(), atom(), list()} | nil
  @type neighbour :: pid() | atom() | {atom(), node()}

  @default_sync_interval 500
  @default_max_message_bytes 1_048_576
  @max_manifest_dots 65_536

  @doc """
  Starts a replica.

  Options:
    * `:name` - register the process under this atom.
    * `:neighbours` - initial neighbours (see `set_neighbours/2`).
    * `:on_diffs` - `fun/1` or `{m, f, a}`, called in the replica process with a list of
      `{:add, key, value}` and `{:remove, key}` whenever read values change.
    * `:sync_interval` - ms between anti-entropy rounds (default #{@default_sync_interval}).
    * `:max_message_bytes` - upper bound of one replication message (default 1 MiB).
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) when is_list(opts) do
    opts = validate_opts!(opts)

    case Keyword.get(opts, :name) do
      nil -> GenServer.start_link(__MODULE__, opts)
      name -> GenServer.start_link(__MODULE__, opts, name: name)
    end
  end

  @doc "A child spec; its id is the `:name` option (or `Drove.CRDT`)."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: Keyword.get(opts, :name, __MODULE__),
      start: {__MODULE__, :start_link, [opts]},
      shutdown: Keyword.get(opts, :shutdown, 5000)
    }
  end

  @doc "Stores `value` under `key`. Returns `crdt`."
  @spec put(crdt(), key(), value(), timeout()) :: crdt()
  def put(crdt, key, value, timeout \\ 5000) do
    case Handles.lookup(crdt) do
      {_, h} -> ok!(Native.put(h, Native.key(key), Native.value(value)))
      nil -> GenServer.call(crdt, {:put, key, value}, timeout)
    end

    crdt
  end

  @doc "Removes `key`. Returns `crdt`."
  @spec delete(crdt(), key(), timeout()) :: crdt()
  def delete(crdt, key, timeout \\ 5000) do
    case Handles.lookup(crdt) do
      {_, h} -> ok!(Native.delete(h, Native.key(key)))
      nil -> GenServer.call(crdt, {:delete, key}, timeout)
    end

    crdt
  end

  @doc "Stores every pair of `map`. Returns `crdt`."
  @spec merge(crdt(), map(), timeout()) :: crdt()
  def merge(crdt, map, timeout \\ 5000) when is_map(map) do
    Enum.each(map, fn {k, v} -> put(crdt, k, v, timeout) end)
    crdt
  end

  @doc "Removes every key of `keys`. Returns `crdt`."
  @spec drop(crdt(), [key()], timeout()) :: crdt()
  def drop(crdt, keys, timeout \\ 5000) when is_list(keys) do
    Enum.each(keys, &delete(crdt, &1, timeout))
    crdt
  end

  @doc "The value of `key`, or `nil`."
  @spec get(crdt(), key(), timeout()) :: value() | nil
  def get(crdt, key, timeout \\ 5000) do
    case fetch(crdt, key, timeout) do
      {:ok, v} -> v
      :error -> nil
    end
  end

  @doc "`{:ok, value}` or `:error` (tells a stored `nil` from a missing key)."
  @spec fetch(crdt(), key(), timeout()) :: {:ok, value()} | :error
  def fetch(crdt, key, timeout \\ 5000) do
    case Handles.lookup(crdt) do
      {_, h} -> Native.get(h, Native.key(key))
      nil -> GenServer.call(crdt, {:fetch, key}, timeout)
    end
  end

  @doc "A map of the given keys that are present."
  @spec take(crdt(), [key()], timeout()) :: map()
  def take(crdt, keys, timeout \\ 5000) when is_list(keys) do
    Enum.reduce(keys, %{}, fn k, acc ->
      case fetch(crdt, k, timeout) do
        {:ok, v} -> Map.put(acc, k, v)
        :error -> acc
      end
    end)
  end

  @doc "The whole map."
  @spec to_map(crdt(), timeout()) :: map()
  def to_map(crdt, timeout \\ 5000) do
    case Handles.lookup(crdt) do
      {_, h} -> Map.new(Native.to_list(h))
      nil -> GenServer.call(crdt, :to_map, timeout)
    end
  end

  @doc """
  Sets the neighbours: pids, local names, or `{name, node}`. Asynchronous, as in DeltaCrdt.
  The replica itself is ignored if listed.
  """
  @spec set_neighbours(crdt(), [neighbour()]) :: :ok
  def set_neighbours(crdt, neighbours) when is_list(neighbours) do
    GenServer.cast(crdt, {:set_neighbours, neighbours})
  end

  @doc """
  Counters of the replica: `:size`, `:memory` (bytes held in C), `:neighbours`,
  `:bad_messages`, `:deltas_in`, `:deltas_out`, `:rounds`, and more.
  """
  @spec info(crdt(), timeout()) :: map()
  def info(crdt, timeout \\ 5000), do: GenServer.call(crdt, :info, timeout)

  @doc false
  # Runs an anti-entropy round with every neighbour now (tests, diagnostics).
  @spec sync(crdt()) :: :ok
  def sync(crdt), do: GenServer.cast(crdt, :sync_now)

  defp ok!(:ok), do: :ok
  defp ok!({:error, reason}), do: raise("Drove.CRDT native error: #{inspect(reason)}")

  # ------------------------------------------------------------------ options

  @known [
    :name,
    :neighbours,
    :on_diffs,
    :sync_interval,
    :max_message_bytes,
    :max_sync_size,
    :shutdown,
    :crdt,
    :storage_module
  ]

  defp validate_opts!(opts) do
    Enum.each(opts, fn
      {k, _} when k in @known ->
        :ok

      other ->
        raise ArgumentError,
              "unknown Drove.CRDT option #{inspect(other)}; accepted: #{inspect(@known)}"
    end)

    case Keyword.get(opts, :name) do
      nil -> :ok
      n when is_atom(n) -> :ok
      n -> raise ArgumentError, ":name must be an atom, got: #{inspect(n)}"
    end

    case Keyword.get(opts, :on_diffs) do
      nil -> :ok
      f when is_function(f, 1) -> :ok
      {m, f, a} when is_atom(m) and is_atom(f) and is_list(a) -> :ok
      o -> raise ArgumentError, ":on_diffs must be a fun/1 or {m, f, a}, got: #{inspect(o)}"
    end

    pos_int!(opts, :sync_interval, @default_sync_interval)
    pos_int!(opts, :max_message_bytes, @default_max_message_bytes)

    unless is_list(Keyword.get(opts, :neighbours, [])) do
      raise ArgumentError, ":neighbours must be a list"
    end

    opts
  end

  defp pos_int!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      n when is_integer(n) and n > 0 -> n
      o -> raise ArgumentError, "#{inspect(key)} must be a positive integer, got: #{inspect(o)}"
    end
  end

  # ------------------------------------------------------------------ server

  defmodule Neighbour do
    @moduledoc false
    defstruct dest: nil, mref: nil, pid: nil, up: false, round: nil
  end

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    <<rid::64>> = :crypto.strong_rand_bytes(8)
    on_diffs = Keyword.get(opts, :on_diffs)
    handle = Native.replica_new(rid, self(), on_diffs != nil)
    name = Keyword.get(opts, :name)
    Handles.register(name, self(), handle)

    state = %{
      handle: handle,
      name: name,
      on_diffs: on_diffs,
      interval: Keyword.get(opts, :sync_interval, @default_sync_interval),
      max_bytes: Keyword.get(opts, :max_message_bytes, @default_max_message_bytes),
      neighbours: %{},
      passive: %{},
      stats: %{bad_messages: 0, deltas_in: 0, deltas_out: 0, rounds: 0, rounds_done: 0}
    }

    state = apply_neighbours(state, Keyword.get(opts, :neighbours, []))
    Process.send_after(self(), :sync_tick, state.interval)
    {:ok, state}
  end

  @impl true
  def handle_call({:put, k, v}, _from, s) do
    {:reply, ok!(Native.put(s.handle, Native.key(k), Native.value(v))), s}
  end

  def handle_call({:delete, k}, _from, s) do
    {:reply, ok!(Native.delete(s.handle, Native.key(k))), s}
  end

  def handle_call({:fetch, k}, _from, s), do: {:reply, Native.get(s.handle, Native.key(k)), s}
  def handle_call(:to_map, _from, s), do: {:reply, Map.new(Native.to_list(s.handle)), s}

  def handle_call(:info, _from, s) do
    up = for {_, %Neighbour{up: true, dest: d}} <- s.neighbours, do: d

    info =
      s.handle
      |> Native.info()
      |> Map.merge(s.stats)
      |> Map.merge(%{
        neighbours: Map.keys(s.neighbours),
        neighbours_up: up,
        passive_peers: Map.keys(s.passive),
        rounds_in_flight: Enum.count(s.neighbours, fn {_, n} -> n.round != nil end)
      })

    {:reply, info, s}
  end

  @impl true
  def handle_cast({:set_neighbours, list}, s), do: {:noreply, apply_neighbours(s, list)}
  def handle_cast(:sync_now, s), do: {:noreply, start_rounds(s, true)}

  def handle_cast(other, s) do
    {:noreply, bad_message(s, {:cast, other})}
  end

  @impl true
  def handle_info(:drove_flush, s), do: {:noreply, flush(s)}

  def handle_info(:sync_tick, s) do
    Process.send_after(self(), :sync_tick, s.interval)
    {:noreply, s |> remonitor() |> start_rounds(false)}
  end

  def handle_info({:drove_delta, from, bin}, s) when is_pid(from) and is_binary(bin) do
    {:noreply, s |> note_peer(from) |> join(bin)}
  end

  def handle_info({:drove_sync_req, from, ref, ctx, digest}, s)
      when is_pid(from) and is_reference(ref) and is_binary(ctx) and is_binary(digest) do
    s = note_peer(s, from)

    case Native.sync_reply(s.handle, ctx, digest, s.max_bytes, @max_manifest_dots) do
      {:ok, chunks, my_ctx, manifest} ->
        Enum.each(chunks, &send_to(from, {:drove_delta, self(), &1}))
        send_to(from, {:drove_sync_reply, self(), ref, my_ctx, manifest})
        {:noreply, bump(s, :deltas_out, length(chunks))}

      {:error, reason} ->
        {:noreply, bad_message(s, {:sync_req, reason})}
    end
  end

  def handle_info({:drove_sync_reply, from, ref, ctx, manifest}, s)
      when is_pid(from) and is_reference(ref) and is_binary(ctx) and is_binary(manifest) do
    case Enum.find(s.neighbours, fn {_, n} -> match?({^ref, _}, n.round) end) do
      nil ->
        # a reply to a round we gave up on (or never started): still valid data
        {:noreply, finish_round(s, from, ctx, manifest)}

      {dest, n} ->
        s = put_in(s.neighbours[dest], %{n | round: nil, pid: from})
        {:noreply, finish_round(s, from, ctx, manifest)}
    end
  end

  def handle_info({:drove_bye, from}, s) when is_pid(from) do
    case Map.pop(s.passive, from) do
      {nil, _} ->
        {:noreply, s}

      {mref, passive} ->
        Process.demonitor(mref, [:flush])
        {:noreply, %{s | passive: passive}}
    end
  end

  def handle_info({:DOWN, mref, :process, _obj, _reason}, s) do
    case Enum.find(s.neighbours, fn {_, n} -> n.mref == mref end) do
      {dest, n} ->
        {:noreply, put_in(s.neighbours[dest], %{n | mref: nil, up: false, round: nil})}

      nil ->
        passive = for {pid, r} <- s.passive, r != mref, into: %{}, do: {pid, r}
        {:noreply, %{s | passive: passive}}
    end
  end

  def handle_info({:EXIT, _pid, reason}, s) when reason in [:normal, :shutdown] do
    {:noreply, s}
  end

  def handle_info({:EXIT, _pid, {:shutdown, _}}, s), do: {:noreply, s}
  def handle_info({:EXIT, _pid, reason}, s), do: {:stop, reason, s}

  def handle_info(other, s), do: {:noreply, bad_message(s, other)}

  @impl true
  def terminate(_reason, s) do
    # last flush: writes made just before a stop still reach the neighbours
    flush(s)
    Enum.each(s.passive, fn {pid, _} -> send_to(pid, {:drove_bye, self()}) end)
    Handles.unregister(s.name, self())
    :ok
  end

  # ------------------------------------------------------------------ replication

  defp flush(s) do
    case Native.take_outbox(s.handle, s.max_bytes) do
      {:error, reason} ->
        Logger.error("Drove.CRDT #{inspect(s.name || self())}: outbox: #{inspect(reason)}")
        s

      {chunks, diffs} ->
        targets = push_targets(s)
        for c <- chunks, t <- targets, do: send_to(t, {:drove_delta, self(), c})
        s = bump(s, :deltas_out, length(chunks) * length(targets))
        emit(s, diffs)
        s
    end
  end

  defp push_targets(s) do
    active = for {_, %Neighbour{up: true} = n} <- s.neighbours, do: n.pid || n.dest
    active_pids = for {_, %Neighbour{pid: p}} <- s.neighbours, is_pid(p), do: p
    active ++ (Map.keys(s.passive) -- active_pids)
  end

  defp join(s, bin) do
    case Native.join(s.handle, bin, s.on_diffs != nil) do
      {:ok, diffs, _n} ->
        s = bump(s, :deltas_in, 1)
        emit(s, diffs)
        s

      {:error, reason} ->
        bad_message(s, {:delta, reason})
    end
  end

  defp finish_round(s, from, ctx, manifest) do
    case Native.sync_finish(s.handle, ctx, manifest, s.max_bytes, s.on_diffs != nil) do
      {:ok, chunks, diffs, _removed} ->
        Enum.each(chunks, &send_to(from, {:drove_delta, self(), &1}))
        s = s |> bump(:deltas_out, length(chunks)) |> bump(:rounds_done, 1)
        emit(s, diffs)
        s

      {:error, reason} ->
        bad_message(s, {:sync_reply, reason})
    end
  end

  defp start_rounds(s, force) do
    now = System.monotonic_time(:millisecond)
    timeout = max(10 * s.interval, 5_000)

    {neighbours, started} =
      Enum.map_reduce(s.neighbours, 0, fn {dest, n}, acc ->
        free = n.round == nil or match?({_, deadline} when deadline < now, n.round)

        if n.up and (free or force) do
          ref = make_ref()
          req = {:drove_sync_req, self(), ref, Native.ctx(s.handle), Native.digest(s.handle)}
          send_to(n.pid || dest, req)
          {{dest, %{n | round: {ref, now + timeout}}}, acc + 1}
        else
          {{dest, n}, acc}
        end
      end)

    bump(%{s | neighbours: Map.new(neighbours)}, :rounds, started)
  end

  defp apply_neighbours(s, list) do
    wanted =
      list
      |> Enum.map(&normalize_dest/1)
      |> Enum.reject(&self_dest?(&1, s))
      |> Enum.uniq()

    {keep, drop} = Map.split(s.neighbours, wanted)

    Enum.each(drop, fn {_, n} ->
      if n.mref, do: Process.demonitor(n.mref, [:flush])
      send_to(n.pid || n.dest, {:drove_bye, self()})
    end)

    added =
      for d <- wanted, not Map.has_key?(keep, d), into: %{}, do: {d, monitor(%Neighbour{dest: d})}

    s = %{s | neighbours: Map.merge(keep, added)}
    if map_size(added) > 0, do: start_rounds(s, false), else: s
  end

  defp normalize_dest({name, node}) when is_atom(name) and node == node(), do: name
  defp normalize_dest(dest) when is_pid(dest) or is_atom(dest), do: dest
  defp normalize_dest({name, node} = d) when is_atom(name) and is_atom(node), do: d

  defp normalize_dest(other) do
    raise ArgumentError,
          "a neighbour is a pid, a local name or {name, node}, got: #{inspect(other)}"
  end

  defp self_dest?(d, s), do: d == self() or (s.name != nil and d == s.name)

  defp monitor(%Neighbour{dest: dest} = n) do
    mref = Process.monitor(dest)
    pid = if is_pid(dest), do: dest, else: n.pid
    %{n | mref: mref, up: true, pid: pid}
  end

  defp remonitor(s) do
    neighbours =
      Map.new(s.neighbours, fn
        {d, %Neighbour{mref: nil} = n} -> {d, monitor(%{n | pid: nil})}
        other -> other
      end)

    %{s | neighbours: neighbours}
  end

  defp note_peer(s, pid) do
    known? =
      Map.has_key?(s.passive, pid) or
        Enum.any?(s.neighbours, fn {d, n} -> n.pid == pid or d == pid end)

    if known? do
      s
    else
      %{s | passive: Map.put(s.passive, pid, Process.monitor(pid))}
    end
  end

  # Never block on connection set-up: an unconnected peer is repaired by anti-entropy later.
  defp send_to(dest, msg), do: :erlang.send(dest, msg, [:noconnect])

  defp emit(_s, []), do: :ok
  defp emit(%{on_diffs: nil}, _), do: :ok
  defp emit(%{on_diffs: f}, diffs) when is_function(f, 1), do: f.(diffs)
  defp emit(%{on_diffs: {m, f, a}}, diffs), do: apply(m, f, a ++ [diffs])

  defp bump(s, key, n), do: %{s | stats: Map.update!(s.stats, key, &(&1 + n))}

  defp bad_message(s, what) do
    n = s.stats.bad_messages + 1

    if n <= 10 or rem(n, 1000) == 0 do
      Logger.warning(
        "Drove.CRDT #{inspect(s.name || self())} ignored a bad message (#{n} so far): " <>
          inspect(what, limit: 5, printable_limit: 64)
      )
    end

    bump(s, :bad_messages, 1)
  end
end

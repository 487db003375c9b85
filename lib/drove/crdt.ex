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
      replica id, the same way on every node; on one node the later write wins. The wall
      clock is the kernel's coarse clock (one tick, 1-4 ms, old): writes on two nodes less
      than a tick apart are ordered as if they were in the same millisecond.
    * Reads and local writes do not go through the replica process: they call the NIF
      directly, so a write is visible to readers on the same node when `put/3` returns.

  ## Replication

  Local writes are applied at once and coalesced into an outbox that the replica process
  pushes to every neighbour as a delta as soon as it runs (no timer). Every
  `:sync_interval` ms an anti-entropy round starts with some neighbours, taken in turn (all
  of them in a cluster of up to 5 nodes, about 2 log2(n) of n beyond), and with a
  neighbour at once when it comes up. A round first compares 20-byte summaries (hashes of
  the context and the bucket digests): replicas that hold the same thing are done. Else
  contexts and bucket digests are exchanged and each side receives what it has not seen,
  in messages of at most `:max_message_bytes`. At most one round is in flight per
  neighbour. Each message is self-contained: losing one (a connection cut)
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
    * Reads by name do not go through the replica process. For a moment after that process
      dies (until `Drove.Handles` has handled its exit, or the restarted process has
      registered its own replica in its `init/1`), reads by its name answer from its last
      state; DeltaCrdt's reads exit then, as Drove's do afterwards until the restart.
  """
  use GenServer
  @behaviour Drove.Owner
  require Logger

  alias Drove.{Handles, Native, Replicator}

  @type crdt :: GenServer.server()
  @type key :: term()
  @type value :: term()
  @type diff :: {:add, key(), value()} | {:remove, key()}
  @type on_diffs :: (list(diff()) -> any()) | {module(), atom(), list()} | nil
  @type neighbour :: pid() | atom() | {atom(), node()}

  @default_sync_interval 500
  @default_max_message_bytes 1_048_576

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
      {_, h} -> put_native(h, key, value)
      nil -> GenServer.call(crdt, {:put, key, value}, timeout)
    end

    crdt
  end

  @doc "Removes `key`. Returns `crdt`."
  @spec delete(crdt(), key(), timeout()) :: crdt()
  def delete(crdt, key, timeout \\ 5000) do
    case Handles.lookup(crdt) do
      {_, h} -> delete_native(h, key)
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
      {_, h} -> fetch_native(h, key)
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
    # checked here, so a bad designation raises in the caller, not in the replica process
    Enum.each(neighbours, &Replicator.normalize_dest/1)
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

  # The NIF encodes common keys and values itself (no term_to_binary garbage); it answers
  # :fallback for the shapes it leaves to term_to_binary (maps, pids, ...).
  defp put_native(h, key, value) do
    case Native.put_t(h, key, value) do
      :fallback -> ok!(Native.put(h, Native.key(key), Native.value(value)))
      other -> ok!(other)
    end
  end

  defp delete_native(h, key) do
    case Native.delete_t(h, key) do
      :fallback -> ok!(Native.delete(h, Native.key(key)))
      other -> ok!(other)
    end
  end

  defp fetch_native(h, key) do
    case Native.get_t(h, key) do
      :fallback -> Native.get(h, Native.key(key))
      other -> other
    end
  end

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
    Drove.Options.known!(opts, @known, "Drove.CRDT")

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

    Drove.Options.replication!(opts, @default_sync_interval)

    case Keyword.get(opts, :neighbours, []) do
      l when is_list(l) -> Enum.each(l, &Replicator.normalize_dest/1)
      _ -> raise ArgumentError, ":neighbours must be a list"
    end

    opts
  end

  # ------------------------------------------------------------------ server

  @impl true
  def init(opts) do
    on_diffs = Keyword.get(opts, :on_diffs)
    name = Keyword.get(opts, :name)

    {handle, repl} =
      Drove.Owner.open(
        [
          label: name || self(),
          interval: Keyword.get(opts, :sync_interval, @default_sync_interval),
          max_bytes: Keyword.get(opts, :max_message_bytes, @default_max_message_bytes),
          want_diffs: on_diffs != nil
        ],
        on_diffs != nil
      )

    Handles.register(name, self(), handle)
    state = %{handle: handle, name: name, on_diffs: on_diffs, repl: repl}
    repl = Replicator.set_neighbours(repl, Keyword.get(opts, :neighbours, []), name)
    {:ok, %{state | repl: repl}}
  end

  @impl true
  def handle_call({:put, k, v}, _from, s) do
    {:reply, put_native(s.handle, k, v), s}
  end

  def handle_call({:delete, k}, _from, s) do
    {:reply, delete_native(s.handle, k), s}
  end

  def handle_call({:fetch, k}, _from, s), do: {:reply, fetch_native(s.handle, k), s}
  def handle_call(:to_map, _from, s), do: {:reply, Map.new(Native.to_list(s.handle)), s}

  def handle_call(:info, _from, s) do
    {:reply, s.handle |> Native.info() |> Map.merge(Replicator.info(s.repl)), s}
  end

  def handle_call(other, from, s), do: Drove.Owner.handle_call(other, from, s)

  @impl true
  def handle_cast(msg, s), do: Drove.Owner.handle_cast(msg, s)

  @impl true
  def handle_info({:EXIT, _pid, reason}, s)
      when reason in [:normal, :shutdown] or
             (is_tuple(reason) and tuple_size(reason) == 2 and elem(reason, 0) == :shutdown) do
    {:noreply, s}
  end

  # Exit signals from processes linked to the replica are local; an {:EXIT, pid, reason}
  # naming a process of another node is a message a peer made up: it must not stop us.
  # (The parent's exit is handled by GenServer itself, before handle_info.)
  def handle_info({:EXIT, pid, reason} = msg, s) when is_pid(pid) do
    if node(pid) == node() do
      {:stop, reason, s}
    else
      {:noreply, %{s | repl: Replicator.bad_message(s.repl, msg)}}
    end
  end

  def handle_info(msg, s), do: Drove.Owner.handle_info(__MODULE__, msg, s)

  @impl Drove.Owner
  def handle_diffs(diffs, s) do
    emit(s, diffs)
    s
  end

  @impl true
  def terminate(_reason, s) do
    # last flush: writes made just before a stop still reach the neighbours
    {_repl, diffs} = Drove.Owner.close(s)
    emit(s, diffs)
    :ok
  end

  defp emit(_s, []), do: :ok
  defp emit(%{on_diffs: nil}, _), do: :ok
  defp emit(%{on_diffs: f}, diffs) when is_function(f, 1), do: f.(diffs)
  defp emit(%{on_diffs: {m, f, a}}, diffs), do: apply(m, f, a ++ [diffs])
end

defmodule Drove.Registry do
  @moduledoc """
  A distributed process registry with the API of `Horde.Registry` (unique keys), replicated
  by Drove's C delta-CRDT.

      children = [{Drove.Registry, name: MyApp.Registry, keys: :unique, members: :auto}]

      GenServer.start_link(MyWorker, arg, name: {:via, Drove.Registry, {MyApp.Registry, :key}})
      Drove.Registry.lookup(MyApp.Registry, :key)   #=> [{pid, nil}]

  The process registered under `name` owns the ETS tables Horde users read (`name` for
  meta, `:"keys_\#{name}"` with rows `{key, {name, node}, {pid, value}}`,
  `:"members_\#{name}"` with rows `{member, 1}`); they exist exactly while it runs, so reads
  after it stopped raise `ArgumentError`.

  ## Where Drove deliberately differs from Horde

    * A via registration of a name already held by a live process answers `:no`, so
      `GenServer.start_link/3` returns `{:error, {:already_started, pid}}` at once, on any
      node whose replica knows the holder (Horde answers `:yes` and kills one of the two
      later).
    * Registration writes the local replica and the ETS tables in the calling process:
      `lookup/2` right after `register/3` sees the entry (read-your-writes, horde#267), and
      registration does not queue behind a registry process (no 5 s call timeout).
    * A remote pid counts as alive while its node is connected (see "What a lookup can rely
      on" below): the tables drop a node's entries on `nodedown` and show them again on
      `nodeup`. No RPC per lookup.
    * Entries are removed only by the node that owns the process (exit, `unregister/2`,
      conflict loss, or its registry stopping). A membership change never removes
      registrations (horde#258), and `unregister/2` removes only the caller's own key.
    * Concurrent registrations of one key are resolved by a hybrid logical clock (then
      replica id), the same on every node; the loser gets the exit signal
      `{:name_conflict, {key, value}, registry, winner_pid}` from its own node.
    * `register/3` returns `{:ok, registry_pid}` as Horde does.
    * There is no `:"pids_\#{name}"` table: which keys a process holds is indexed inside the
      replica, in C (`c_src/owners.h`, 20–30 bytes per registration instead of an ETS row
      of about 100). `keys/2` reads it, for local and remote pids alike.
    * Registrants are not linked to the registry process: the replica watches each with a
      resource monitor, and a registrant's exit removes its registrations in C, in the
      exiting process itself (Horde links every registrant to its registry process, which
      then handles one `{:EXIT, ...}` message per exit). What the link gave is kept: when
      the registry process stops, its local registrants get its exit reason as an exit
      signal (from the registry process when it stops normally, from a guard process when
      it is killed, then with reason `:killed`).
    * Only local processes can be registered (`register_name/2` of another node's pid
      answers `:no`): a process is watched by its own node.
    * Several members may run on one node. A registration belongs to the member it was
      made through (the keys table shows it as the row's member, `{name, node}`): that
      member takes the registrant down when it stops, tells it when it loses a conflict,
      and re-asserts the entry if a peer removes it while the registrant lives.

  ## What a lookup can rely on

  A lookup reads this node's tables, with no message to any other node:

    * a process registered on this node is answered while it is alive, from the moment
      `register/3` (or the via start) returned;
    * a process of another node is answered once its registration has reached this node
      (a push, about a millisecond on a LAN) and while its node is connected. Connected
      means the distribution connection is open as the kernel sees it (`Drove.Liveness`):
      once a node's operating-system process has exited, no node answers its pids, even
      before its runtime has handled the `nodedown`;
    * what cannot be known without a round trip is not known: a node that is halting but
      has not closed its connection to this one yet (`:peer.stop/1` returns to its caller
      when the caller's own connection drops, which can be a few milliseconds earlier), or
      one whose machine lost power (seen at `net_ticktime`), is still up here. A caller that
      must not act on such a pid either monitors it (the monitor fires `:noconnection` when
      the connection goes) or asks with `lookup(registry, key, confirm: true)`, which pays
      one round trip to the pid's node for a remote answer and never answers a pid of a
      node that has stopped.

  Horde makes that round trip on every remote lookup, via calls included. Drove's `lookup/2`
  and via names stay local (bench/RESULTS.md gives both costs); `Horde.Registry.lookup/2` of
  compat/horde confirms remote answers, as Horde's does, and its via names do not.
  """

  import Kernel, except: [send: 2]

  alias Drove.{Handles, Native}
  alias Drove.Registry.{Entry, Server}

  @type registry :: atom()
  @type key :: term()
  @type value :: term()
  @type option ::
          {:name, atom()}
          | {:keys, :unique}
          | {:members, :auto | [atom() | {atom(), node()}]}
          | {:listeners, [atom()]}
          | {:meta, keyword()}
          | {:sync_interval, pos_integer()}

  @callback init(options :: term()) :: {:ok, keyword() | map()} | :ignore

  defmacro __using__(_opts) do
    quote location: :keep do
      @behaviour Drove.Registry

      @doc false
      def child_spec(options) do
        %{
          id: __MODULE__,
          start: {__MODULE__, :start_link, [options]},
          type: :supervisor
        }
      end

      @doc false
      def init(options), do: {:ok, options}

      defoverridable child_spec: 1, init: 1
    end
  end

  @doc "A child spec; `type: :supervisor`, id `Drove.Registry` unless given."
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(options) do
    %{
      id: Keyword.get(options, :id, __MODULE__),
      start: {__MODULE__, :start_link, [options]},
      type: :supervisor
    }
  end

  @doc """
  Starts a registry. Options: `:name` (required), `keys: :unique` (required), `:members`
  (`:auto` or a list of names / `{name, node}`; default: itself), `:listeners` (local
  names sent `{:register, reg, key, pid, value}` and `{:unregister, reg, key, pid}` for
  every registration change on any node), `:meta` (initial meta keyword list),
  `:sync_interval` (ms between anti-entropy rounds, default 500).
  """
  @spec start_link([option()]) :: Supervisor.on_start()
  def start_link(options) when is_list(options) do
    options = Server.validate!(options)
    name = Keyword.fetch!(options, :name)

    Supervisor.start_link(
      [{Server, options}],
      strategy: :one_for_one,
      max_restarts: 3,
      max_seconds: 5,
      name: :"#{name}.Supervisor"
    )
  end

  @doc "Starts a module-based registry: `module.init(init_arg)` gives the options."
  @spec start_link(module(), term(), keyword()) :: Supervisor.on_start() | :ignore
  def start_link(module, init_arg, options \\ []) do
    case module.init(init_arg) do
      {:ok, flags} -> start_link(Keyword.merge(Enum.to_list(flags), options))
      :ignore -> :ignore
      other -> raise ArgumentError, "#{inspect(module)}.init/1 returned #{inspect(other)}"
    end
  end

  @doc "For `init/1` callbacks: returns `{:ok, options}`."
  @spec init([option()]) :: {:ok, [option()]}
  def init(options) when is_list(options), do: {:ok, options}

  @doc """
  Stops the registry's tree (its process and supervisor) on its node. `registry` is its
  name, the name of its top supervisor (`:"\#{name}.Supervisor"`), the pid `start_link/1`
  returned, or `{name, node}`.
  """
  @spec stop(registry() | pid() | {atom(), node()}, term(), timeout()) :: :ok
  def stop(registry, reason \\ :normal, timeout \\ :infinity) do
    # the registry's name, its top supervisor's name, or either's pid
    target = (is_atom(registry) && Process.whereis(registry)) || registry

    {name, node} =
      Drove.Address.resolve!(target, {__MODULE__, :stop, [registry, reason, timeout]})

    Supervisor.stop({:"#{name}.Supervisor", node}, reason, timeout)
  end

  # ------------------------------------------------------------------ registration

  @doc """
  Registers the calling process under `key` with `value`. Returns `{:ok, registry_pid}` or
  `{:error, {:already_registered, pid}}` when a live process holds the key.
  """
  @spec register(registry(), key(), value()) ::
          {:ok, pid()} | {:error, {:already_registered, pid()}}
  def register(registry, key, value) do
    do_register(registry, key, value, self())
  end

  @doc "Unregisters `key` if the calling process holds it; always `:ok`."
  @spec unregister(registry(), key()) :: :ok
  def unregister(registry, key) do
    pid = self()

    case :ets.lookup(keys_table(registry), key) do
      [{^key, {owner, _} = member, {^pid, value}}] ->
        # through the member the key was registered with (another member on this node,
        # maybe): the one that answers for it
        registry = if owner != registry and Handles.lookup(owner), do: owner, else: registry
        %{handle: h, server: server} = instance!(registry)
        kb = Entry.key(key)
        :ok = Native.remove_value(h, kb, Entry.value(pid, value, owner))
        :ets.delete_object(keys_table(registry), {key, member, {pid, value}})
        :ok = Native.disown(h, kb, pid)
        if notify?(registry), do: Kernel.send(server, {:unregistered, pid, key, value})
        :ok

      _ ->
        :ok
    end
  end

  @doc "Unregisters the caller's keys matching `key` whose value matches `pattern`/`guards`."
  @spec unregister_match(registry(), key(), term(), list()) :: :ok
  def unregister_match(registry, key, pattern, guards \\ []) do
    pid = self()

    registry
    |> match(key, pattern, guards)
    |> Enum.each(fn
      {^pid, _} -> unregister(registry, key)
      _ -> :ok
    end)
  end

  @doc "Updates the value of `key` held by the caller: `{new, old}`, or `:error`."
  @spec update_value(registry(), key(), (value() -> value())) :: {value(), value()} | :error
  def update_value(registry, key, callback) when is_function(callback, 1) do
    pid = self()

    case :ets.lookup(keys_table(registry), key) do
      [{^key, {owner, _} = member, {^pid, old}}] ->
        new = callback.(old)
        registry = if owner != registry and Handles.lookup(owner), do: owner, else: registry
        %{handle: h} = instance!(registry)
        :ok = Native.put(h, Entry.key(key), Entry.value(pid, new, owner))
        :ets.insert(keys_table(registry), {key, member, {pid, new}})
        {new, old}

      _ ->
        :error
    end
  end

  # ------------------------------------------------------------------ via callbacks

  @doc false
  @spec register_name({registry(), key()} | {registry(), key(), value()}, pid()) :: :yes | :no
  def register_name({registry, key}, pid), do: register_name({registry, key, nil}, pid)

  def register_name({registry, key, value}, pid) when is_pid(pid) do
    case do_register(registry, key, value, pid) do
      {:ok, _} -> :yes
      {:error, _} -> :no
    end
  end

  @doc false
  @spec unregister_name({registry(), key()} | {registry(), key(), value()}) :: :ok
  def unregister_name({registry, key}), do: unregister(registry, key)
  def unregister_name({registry, key, _value}), do: unregister(registry, key)

  @doc false
  @spec whereis_name({registry(), key()} | {registry(), key(), value()}) :: pid() | :undefined
  def whereis_name({registry, key}) do
    case lookup(registry, key) do
      [{pid, _}] -> pid
      [] -> :undefined
    end
  end

  def whereis_name({registry, key, _value}), do: whereis_name({registry, key})

  @doc false
  # Returns the message, as Kernel.send/2 and Horde.Registry.send/2 do.
  @spec send({registry(), key()} | {registry(), key(), value()}, term()) :: term()
  def send({registry, key} = name, msg) do
    case whereis_name({registry, key}) do
      :undefined -> :erlang.error(:badarg, [name, msg])
      pid -> Kernel.send(pid, msg)
    end
  end

  def send({registry, key, _value}, msg), do: __MODULE__.send({registry, key}, msg)

  # ------------------------------------------------------------------ reads (no process hop)

  @doc """
  `[{pid, value}]` for `key`, or `[]`. Also accepts a via tuple. A local pid must be alive;
  a remote one must be on a connected node.
  """
  @spec lookup(registry(), key()) :: [{pid(), value()}]
  def lookup(registry, key) do
    case :ets.lookup(keys_table(registry), key) do
      [{_key, _member, {pid, value}}] -> if alive?(pid), do: [{pid, value}], else: []
      [] -> []
    end
  end

  @doc """
  `lookup/2` with options:

    * `confirm: true` asks a remote pid's own node whether it is alive before answering
      it (`Drove.Liveness.confirm_pid/2`): one round trip per remote answer, as Horde pays
      on every remote lookup. With it, a pid of a node that is halting is never answered,
      even right after `:peer.stop/1` returned to another node (see "What a lookup can rely
      on"). A local answer costs nothing more. Default `false`.
    * `timeout` (default 5000 ms) bounds that round trip; a node that does not answer in
      time is taken as up.
  """
  @spec lookup(registry(), key(), keyword()) :: [{pid(), value()}]
  def lookup(registry, key, opts) when is_list(opts) do
    case lookup(registry, key) do
      [{pid, _value}] = found when node(pid) != node() ->
        if Keyword.get(opts, :confirm, false) and
             not Drove.Liveness.confirm_pid(pid, Keyword.get(opts, :timeout, 5000)),
           do: [],
           else: found

      local_or_none ->
        local_or_none
    end
  end

  @doc "`lookup/2` of a via tuple `{:via, Drove.Registry, {registry, key}}`."
  @spec lookup({:via, module(), tuple()}) :: [{pid(), value()}]
  def lookup({:via, _mod, {registry, key}}), do: lookup(registry, key)
  def lookup({:via, _mod, {registry, key, _value}}), do: lookup(registry, key)

  @doc """
  Runs a `Registry`-style match spec over all entries: heads are `{key, pid, value}`;
  any other head raises `ArgumentError`.
  """
  @spec select(registry(), [{tuple(), list(), list()}]) :: [term()]
  def select(registry, spec) when is_list(spec) do
    spec =
      for part <- spec do
        case part do
          {{key, pid, value}, guards, body} -> {{key, :_, {pid, value}}, guards, body}
          _ -> raise ArgumentError, "invalid match specification: #{inspect(spec)}"
        end
      end

    :ets.select(keys_table(registry), spec)
  end

  @doc "`[{pid, value}]` of `key` when the value matches `pattern` and `guards`."
  @spec match(registry(), key(), term(), list()) :: [{pid(), value()}]
  def match(registry, key, pattern, guards \\ []) when is_list(guards) do
    ms = value_spec(pattern, guards)

    for {_k, _m, {pid, value}} <- :ets.lookup(keys_table(registry), key),
        :ets.match_spec_run([value], ms) == [true],
        do: {pid, value}
  end

  @doc "The number of entries of `key` whose value matches `pattern` and `guards`."
  @spec count_match(registry(), key(), term(), list()) :: non_neg_integer()
  def count_match(registry, key, pattern, guards \\ []) when is_list(guards) do
    registry |> match(key, pattern, guards) |> length()
  end

  # The key is looked up exactly (as in Elixir's Registry): put in a match spec head, a key
  # holding :_, :"$1" or a map would be a pattern and match other keys.
  defp value_spec(pattern, guards) do
    :ets.match_spec_compile([{pattern, guards, [true]}])
  rescue
    ArgumentError ->
      reraise ArgumentError,
              "invalid pattern or guards: #{inspect({pattern, guards})}",
              __STACKTRACE__
  end

  @doc "The number of registered keys this node knows of."
  @spec count(registry()) :: non_neg_integer()
  def count(registry) do
    case :ets.info(keys_table(registry), :size) do
      :undefined -> raise_missing(registry)
      n -> n
    end
  end

  @doc "The keys `pid` holds (local or remote pids)."
  @spec keys(registry(), pid()) :: [key()]
  def keys(registry, pid) when is_pid(pid) do
    %{handle: h} = instance!(registry)
    for {:key, key} <- Native.owned_keys(h, pid), do: key
  end

  @doc "Calls `fun` (or `{m, f, a}` with the entries appended) with the entries of `key`."
  @spec dispatch(
          registry(),
          key(),
          ([{pid(), value()}] -> term()) | {module(), atom(), list()},
          keyword()
        ) ::
          :ok
  def dispatch(registry, key, mfa_or_fun, _opts \\ []) do
    unless is_function(mfa_or_fun, 1) or
             match?({m, f, a} when is_atom(m) and is_atom(f) and is_list(a), mfa_or_fun) do
      raise ArgumentError,
            "dispatch/3 expects a fun/1 or {module, function, args}, got: " <>
              inspect(mfa_or_fun)
    end

    case lookup(registry, key) do
      [] ->
        :ok

      entries ->
        case mfa_or_fun do
          {m, f, a} -> apply(m, f, [entries | a])
          fun when is_function(fun, 1) -> fun.(entries)
        end

        :ok
    end
  end

  @doc "Reads a registry meta value: `{:ok, value}` or `:error`."
  @spec meta(registry(), term()) :: {:ok, term()} | :error
  def meta(registry, key) do
    case :ets.lookup(registry, key) do
      [{^key, value}] -> {:ok, value}
      [] -> :error
    end
  end

  @doc "Stores a registry meta value, replicated to every member."
  @spec put_meta(registry(), term(), term()) :: :ok
  def put_meta(registry, key, value),
    do: GenServer.call(server!(registry), {:put_meta, key, value})

  @doc "Deletes a registry meta value, on every member."
  @spec delete_meta(registry(), term()) :: :ok
  def delete_meta(registry, key), do: GenServer.call(server!(registry), {:delete_meta, key})

  @doc "Replica counters and membership of this node's instance (diagnostics)."
  @spec info(registry()) :: map()
  def info(registry), do: GenServer.call(server!(registry), :info)

  # A registry is named by an atom; anything else (a pid, {name, node}) is not one.
  defp server!(registry) when is_atom(registry), do: registry
  defp server!(registry), do: raise_missing(registry)

  # ------------------------------------------------------------------ internals

  # Table names are cached in :persistent_term by the registry process (building the atom
  # costs more than the lookup itself); the fallback keeps the same name for registries
  # that never ran here, so reads raise ArgumentError as Horde's do.
  @doc false
  @spec keys_table(registry()) :: atom()
  def keys_table(registry) when is_atom(registry) do
    :persistent_term.get({__MODULE__, :keys, registry}, nil) || table_name("keys_", registry)
  end

  def keys_table(registry), do: raise_missing(registry)

  @doc false
  @spec members_table(registry()) :: atom()
  def members_table(registry) when is_atom(registry), do: table_name("members_", registry)
  def members_table(registry), do: raise_missing(registry)

  # The table of a registry that never ran here has no atom yet: no new atom is made for it
  # (nor a SystemLimitError raised for a name too long to prefix), the read raises as
  # Horde's does. The registry process makes its tables' atoms when it starts.
  defp table_name(prefix, registry) do
    String.to_existing_atom(prefix <> Atom.to_string(registry))
  rescue
    ArgumentError -> raise_missing(registry)
  end

  defp instance!(registry) do
    case Handles.lookup(registry) do
      {server, handle} -> %{server: server, handle: handle}
      nil -> raise_missing(registry)
    end
  end

  defp raise_missing(registry) do
    raise ArgumentError,
          "unknown registry: #{inspect(registry)} (the table identifier does not refer to an " <>
            "existing ETS table)"
  end

  @doc false
  # A pid counts as alive when local and alive, or remote on a connected node.
  @spec alive?(pid()) :: boolean()
  def alive?(pid), do: Drove.Liveness.pid_up?(pid)

  defp do_register(registry, key, value, pid, retried \\ false) do
    %{handle: h, server: server} = instance!(registry)
    kb = Entry.key(key)
    vb = Entry.value(pid, value, registry)

    # put_new, and the key filed under pid in the replica's index (which watches pid from
    # its first registration on: its exit drops its registrations)
    case Native.register(h, kb, vb, pid) do
      :ok ->
        registered(registry, server, h, {kb, vb}, Entry.row(key, pid, value, registry))
        {:ok, server}

      :noproc ->
        {:error, :noproc}

      :not_local ->
        {:error, :not_local}

      {:exists, {^pid, _}} ->
        {:error, {:already_registered, pid}}

      {:exists, {holder, _}} ->
        cond do
          alive?(holder) ->
            {:error, {:already_registered, holder}}

          retried ->
            {:error, {:already_registered, holder}}

          true ->
            # a stale entry of a process that is gone: have it removed, then try again
            :ok = GenServer.call(server, {:reap, key, holder})
            do_register(registry, key, value, pid, true)
        end

      {:error, reason} ->
        raise "Drove.Registry native error: #{inspect(reason)}"
    end
  end

  # After a registration in the replica: write the row. Another row for the key may be there:
  # a concurrent registration of the same key, joined from another node after our put, that
  # won it and that the registry process showed; or the row of a holder that exited, whose
  # registration its exit dropped from the replica but whose row is not deleted yet. The
  # replica tells which (`holds`); a registration found lost, at once or after the write (the
  # same race again), goes to the registry process, which resolves it as it does a remote
  # conflict. A row written first needs nothing more: a winner joined later finds it and
  # evicts it. So a registration costs no message and no wake-up of the registry process
  # (unless it has listeners to tell). The registrant is watched by the replica since
  # Native.register; a process registered by another may have exited before its row was
  # written (after its exit dropped the registration): the row is then reaped.
  defp registered(registry, server, h, {kb, vb}, {key, _member, {pid, value}} = row) do
    table = keys_table(registry)

    shown =
      :ets.insert_new(table, row) or
        (Native.holds(h, kb, vb) and :ets.insert(table, row) and Native.holds(h, kb, vb))

    if not shown or notify?(registry) do
      Kernel.send(server, {:registered, pid, key, value})
    end

    if pid != self() and not Process.alive?(pid) do
      :ok = GenServer.call(server, {:reap, key, pid})
    end
  end

  defp notify?(registry), do: :persistent_term.get({__MODULE__, :notify, registry}, true)
end

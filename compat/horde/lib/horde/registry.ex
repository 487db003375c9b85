defmodule Horde.Registry do
  @moduledoc """
  Horde 0.10's `Horde.Registry` API, served by `Drove.Registry`.

  Every function has Horde's name, arity and return shape. The process registered under the
  registry's name owns the ETS tables Horde users read (`name` for meta, `:"keys_\#{name}"`
  with rows `{key, {name, node}, {pid, value}}`, and `:"members_\#{name}"` with rows
  `{member, 1}`; Horde's `:"pids_\#{name}"` is not kept, `keys/2` reads an index in the
  replica); they exist exactly while the registry can answer, and reads after it stopped
  raise `ArgumentError`.

      defmodule MyApp.Registry do
        use Horde.Registry

        def start_link(init_arg),
          do: Horde.Registry.start_link(__MODULE__, init_arg, name: __MODULE__)

        @impl true
        def init(init_arg) do
          [keys: :unique, members: :auto]
          |> Keyword.merge(init_arg)
          |> Horde.Registry.init()
        end
      end

  Where Drove deliberately differs from Horde (a via registration of a taken name is refused
  at once, read-your-writes, membership changes never remove
  registrations, `unregister/2` removes only the caller's own key, `delta_crdt_options` are
  accepted and ignored) is listed in `Drove.Registry` and in `docs/migrating-from-horde.md`.
  """

  import Kernel, except: [send: 2]

  # set while whereis_name/1 runs lookup/2: a via name is not confirmed (see lookup/2)
  @unconfirmed :"$horde_lookup_unconfirmed"

  @type options :: [option()]
  @type option ::
          {:keys, :unique}
          | {:name, atom()}
          | {:delta_crdt_options, keyword()}
          | {:members, [Horde.Cluster.member()] | :auto}
          | {:listeners, [atom()]}
          | {:meta, keyword()}
          | {:distribution_strategy, module()}

  @callback init(options :: keyword()) :: {:ok, map() | options()} | :ignore
  @callback child_spec(options :: options()) :: Supervisor.child_spec()

  # the options init/1 takes (the rest of start_link/1's options are start options)
  @init_keys [:listeners, :meta, :keys, :distribution_strategy, :members, :delta_crdt_options]

  defmacro __using__(options), do: Horde.Using.quoted(__MODULE__, options)

  @doc "A child spec: id is the `:name` option (or `Horde.Registry`), `type: :supervisor`."
  @spec child_spec(options()) :: Supervisor.child_spec()
  def child_spec(options) when is_list(options) do
    %{
      id: Keyword.get(options, :name, Horde.Registry),
      start: {Horde.Registry, :start_link, [options]},
      type: :supervisor
    }
  end

  @doc """
  Starts a registry (see `init/1` for the options; `:name` is required). The tree is
  `:"\#{name}.Supervisor"`; the registry itself is registered as `name`.
  """
  @spec start_link(options()) :: Supervisor.on_start()
  def start_link(options) when is_list(options) do
    {init_options, start_options} = Keyword.split(options, @init_keys)
    {:ok, flags} = init(init_options)
    start_drove(flags, start_options)
  end

  @doc """
  Starts a module-based registry: `module.init(init_arg)` must return `init/1`'s result
  (`{:ok, flags}`) or `:ignore`. `opts` takes `:name`.
  """
  @spec start_link(module(), term(), keyword()) :: Supervisor.on_start()
  def start_link(module, init_arg, opts \\ []) do
    case module.init(init_arg) do
      {:ok, flags} when is_map(flags) or is_list(flags) -> start_drove(flags, opts)
      :ignore -> :ignore
      other -> {:error, {:bad_return, {module, :init, other}}}
    end
  end

  @doc """
  Validates registry options, like `Registry.init/1`: `keys: :unique` is required (anything
  else raises `ArgumentError`); `members` (`:auto` or a list of names and `{name, node}`,
  default `[]`: itself), `listeners`, `meta`, `delta_crdt_options` and
  `distribution_strategy` are accepted. Returns `{:ok, flags}` with Horde's flag keys.
  """
  @spec init(options()) :: {:ok, map()}
  def init(options) when is_list(options) do
    case Keyword.fetch(options, :keys) do
      {:ok, :unique} -> :ok
      {:ok, _other} -> raise ArgumentError, "Only `keys: :unique` is supported."
      :error -> raise ArgumentError, "expected :keys option to be given"
    end

    {:ok,
     %{
       keys: :unique,
       listeners: Keyword.get(options, :listeners, []),
       meta: Keyword.get(options, :meta, nil),
       members: Keyword.get(options, :members, []),
       distribution_strategy:
         Keyword.get(options, :distribution_strategy, Horde.UniformDistribution),
       delta_crdt_options: Keyword.get(options, :delta_crdt_options, [])
     }}
  end

  # Horde's flags and start options -> Drove.Registry options. `delta_crdt_options` and
  # `distribution_strategy` mean nothing to Drove's replication and are dropped.
  defp start_drove(flags, start_options) do
    flags = Map.new(flags)

    options =
      [name: Keyword.get(start_options, :name), keys: Map.get(flags, :keys)] ++
        for {key, value} <- [
              members: Map.get(flags, :members, []),
              listeners: Map.get(flags, :listeners, []),
              meta: Map.get(flags, :meta)
            ],
            value not in [nil, []],
            do: {key, value}

    Drove.Registry.start_link(options)
  end

  @doc "Stops the registry's local tree (its tables go with it)."
  @spec stop(atom(), term(), timeout()) :: :ok
  def stop(registry, reason \\ :normal, timeout \\ 5000),
    do: Drove.Registry.stop(registry, reason, timeout)

  # ------------------------------------------------------------------ registration

  @doc """
  Registers the calling process under `key` with `value`: `{:ok, registry_pid}`, or
  `{:error, {:already_registered, pid}}` when a live process holds the key. See
  `Drove.Registry.register/3`.
  """
  @spec register(atom(), Registry.key(), Registry.value()) ::
          {:ok, pid()} | {:error, {:already_registered, pid()}}
  def register(registry, key, value) when is_atom(registry),
    do: Drove.Registry.register(registry, key, value)

  @doc "Unregisters `key` if the calling process holds it. Always `:ok`."
  @spec unregister(atom(), Registry.key()) :: :ok
  def unregister(registry, key) when is_atom(registry),
    do: Drove.Registry.unregister(registry, key)

  @doc "Unregisters the caller's entries of `key` whose value matches `pattern`/`guards`."
  @spec unregister_match(atom(), Registry.key(), Registry.match_pattern(), Registry.guards()) ::
          :ok
  def unregister_match(registry, key, pattern, guards \\ []) when is_atom(registry),
    do: Drove.Registry.unregister_match(registry, key, pattern, guards)

  @doc "Updates the value of `key` held by the caller: `{new, old}`, or `:error`."
  @spec update_value(atom(), Registry.key(), (Registry.value() -> Registry.value())) ::
          {Registry.value(), Registry.value()} | :error
  def update_value(registry, key, callback) when is_atom(registry),
    do: Drove.Registry.update_value(registry, key, callback)

  # ------------------------------------------------------------------ reads

  @doc """
  `[{pid, value}]` of `key`, or `[]`. A local pid must be alive. A remote one is confirmed
  alive by its own node, as Horde does (one round trip, `Drove.Liveness.confirm_pid/2`), so
  a pid of a node that has just stopped is never answered, even before this node has
  handled its `nodedown`. Set `config :horde, confirm_remote_lookups: false` to answer
  remote pids from the local tables alone (no round trip; a connected node's pids count as
  alive), as `Drove.Registry.lookup/2` does. Reads the `:"keys_\#{registry}"` table
  directly, so a read after the registry stopped raises `ArgumentError` from
  `:ets.lookup/2`, as Horde's does.

  Only a direct `lookup/2` confirms. A via name (`whereis_name/1`, which every
  `GenServer.call` on a `{:via, Horde.Registry, _}` name runs, and `send/2`) answers from the
  local tables, so a call to a remote process costs one round trip, not Horde's two; in the
  moments after its node stopped, such a call exits (`:noconnection` or `:noproc`) as a call
  to a process that ends just after a lookup would.
  """
  @spec lookup(atom(), Registry.key()) :: [{pid(), Registry.value()}]
  def lookup(registry, key) when is_atom(registry) do
    entries = :ets.lookup(Drove.Registry.keys_table(registry), key)

    case entries do
      [{_key, _member, {pid, value}}] ->
        if alive?(pid), do: [{pid, value}], else: []

      [] ->
        []
    end
  end

  defp alive?(pid) when node(pid) == node(), do: Process.alive?(pid)

  defp alive?(pid) do
    if Process.get(@unconfirmed) != true and
         Application.get_env(:horde, :confirm_remote_lookups, true),
       do: Drove.Liveness.confirm_pid(pid, 5000),
       else: Drove.Registry.alive?(pid)
  end

  @doc "`lookup/2` of a via tuple `{:via, Horde.Registry, {registry, key}}`."
  @spec lookup({:via, module(), {atom(), Registry.key()} | {atom(), Registry.key(), term()}}) ::
          [{pid(), Registry.value()}]
  def lookup({:via, _module, {registry, key}}), do: lookup(registry, key)
  def lookup({:via, _module, {registry, key, _value}}), do: lookup(registry, key)

  @doc false
  @spec whereis({:via, module(), tuple()}) :: [{pid(), Registry.value()}]
  def whereis(search), do: lookup(search)

  @doc "Runs a `Registry`-style match spec (heads `{key, pid, value}`) over every entry."
  @spec select(atom(), Registry.spec()) :: [term()]
  def select(registry, spec) when is_atom(registry) and is_list(spec),
    do: Drove.Registry.select(registry, spec)

  @doc "`[{pid, value}]` of `key` when the value matches `pattern` and `guards`."
  @spec match(atom(), Registry.key(), Registry.match_pattern(), Registry.guards()) ::
          [{pid(), Registry.value()}]
  def match(registry, key, pattern, guards \\ []) when is_atom(registry) and is_list(guards),
    do: Drove.Registry.match(registry, key, pattern, guards)

  @doc "The number of entries of `key` whose value matches `pattern` and `guards`."
  @spec count_match(atom(), Registry.key(), Registry.match_pattern(), Registry.guards()) ::
          non_neg_integer()
  def count_match(registry, key, pattern, guards \\ [])
      when is_atom(registry) and is_list(guards),
      do: Drove.Registry.count_match(registry, key, pattern, guards)

  @doc """
  The number of keys in the registry (the size of its keys table, unfiltered), or
  `:undefined` when it is not running here, as Horde's.
  """
  @spec count(atom()) :: non_neg_integer() | :undefined
  def count(registry) when is_atom(registry),
    do: :ets.info(Drove.Registry.keys_table(registry), :size)

  @doc "The keys `pid` holds (local or remote pids); `[]` for anything but a pid, as Horde's."
  @spec keys(atom(), term()) :: [Registry.key()]
  def keys(registry, pid) when is_atom(registry) and is_pid(pid),
    do: Drove.Registry.keys(registry, pid)

  def keys(registry, _not_a_pid) when is_atom(registry), do: []

  @doc "Calls `fun` (or `{m, f, a}`) with `[{pid, value}]` when `key` is registered; `:ok`."
  @spec dispatch(
          atom(),
          Registry.key(),
          ([{pid(), Registry.value()}] -> term()) | {module(), atom(), list()},
          keyword()
        ) :: :ok
  def dispatch(registry, key, mfa_or_fun, opts \\ []) when is_atom(registry),
    do: Drove.Registry.dispatch(registry, key, mfa_or_fun, opts)

  @doc "Reads a registry meta value: `{:ok, value}` or `:error`."
  @spec meta(atom(), Registry.meta_key()) :: {:ok, Registry.meta_value()} | :error
  def meta(registry, key) when is_atom(registry), do: Drove.Registry.meta(registry, key)

  @doc "Stores a registry meta value on every member."
  @spec put_meta(atom(), Registry.meta_key(), Registry.meta_value()) :: :ok
  def put_meta(registry, key, value) when is_atom(registry),
    do: Drove.Registry.put_meta(registry, key, value)

  @doc "Deletes a registry meta value on every member."
  @spec delete_meta(atom(), Registry.meta_key()) :: :ok
  def delete_meta(registry, key) when is_atom(registry),
    do: Drove.Registry.delete_meta(registry, key)

  @doc false
  @deprecated "Use `select/2` instead."
  @spec processes(atom()) :: %{Registry.key() => {pid(), Registry.value()}}
  def processes(registry) when is_atom(registry) do
    registry
    |> Drove.Registry.keys_table()
    |> :ets.tab2list()
    |> Map.new(fn {key, _member, pid_value} -> {key, pid_value} end)
  end

  # ------------------------------------------------------------------ via callbacks

  @doc """
  Via callback. Answers `:no` when a live process already holds the name, so
  `GenServer.start_link/3` returns `{:error, {:already_started, pid}}` (Horde answers `:yes`
  and kills one of the two later).
  """
  @spec register_name({atom(), term()} | {atom(), term(), term()}, pid()) :: :yes | :no
  def register_name(name, pid), do: Drove.Registry.register_name(name, pid)

  @doc "Via callback: the pid registered under the name, or `:undefined`."
  @spec whereis_name({atom(), term()} | {atom(), term(), term()}) :: pid() | :undefined
  def whereis_name({registry, key}), do: whereis_name(registry, key)
  def whereis_name({registry, key, _value}), do: whereis_name(registry, key)

  defp whereis_name(registry, key) when is_atom(registry) do
    # not a tail call: Horde.Registry.lookup/2 and this function stay on the stack of an
    # ArgumentError raised after the registry stopped, as under Horde (Sagents' tests look
    # for both), so lookup/2 is told through the process dictionary not to confirm
    Process.put(@unconfirmed, true)

    try do
      case lookup(registry, key) do
        [{pid, _value}] -> pid
        [] -> :undefined
      end
    after
      Process.delete(@unconfirmed)
    end
  end

  @doc "Via callback: unregisters the name if the calling process holds it."
  @spec unregister_name({atom(), term()} | {atom(), term(), term()}) :: :ok
  def unregister_name(name), do: Drove.Registry.unregister_name(name)

  @doc """
  Via callback: sends `msg` to the process of the name and returns `msg`, as Horde's does;
  `:badarg` error when missing.
  """
  @spec send({atom(), term()} | {atom(), term(), term()}, term()) :: term()
  def send({registry, key} = name, msg) when is_atom(registry) do
    case whereis_name(registry, key) do
      :undefined -> :erlang.error(:badarg, [name, msg])
      pid -> Kernel.send(pid, msg)
    end
  end

  def send({registry, key, _value}, msg), do: __MODULE__.send({registry, key}, msg)
end

defmodule Drove.Registry.Server do
  @moduledoc false
  # The process registered under the registry's name: owns the ETS tables and the replica,
  # deletes the rows of exited registrants, applies remote changes to the tables, resolves
  # conflicts, hides the entries of disconnected nodes, and runs the replication protocol.
  #
  # Replica keys: see Drove.Registry.Entry. Callers write their own registrations (Drove.Registry); this
  # process hears of one only when it has listeners to tell or a conflict to settle. The
  # replica also indexes the keys of each pid shown in the keys table (Native.own/disown,
  # c_src/owners.h), and watches every local registrant with a resource monitor
  # (Native.watch): a registrant's exit drops its registrations in C, run by the exiting
  # process, and this process is sent :drove_gone to delete the rows (take_gone).
  # Registrants are not linked to this process: a guard process (guard/2) gives them the
  # exit signal a link would when this process dies, however it dies.
  use GenServer
  @behaviour Drove.Owner
  require Logger

  alias Drove.{Handles, Native, Replicator}
  alias Drove.Registry, as: Reg
  alias Drove.Registry.Entry

  @known [
    :name,
    :keys,
    :members,
    :listeners,
    :meta,
    :sync_interval,
    :max_message_bytes,
    :delta_crdt_options,
    :distribution_strategy,
    :id,
    :shutdown
  ]

  @doc false
  @spec validate!(keyword()) :: keyword()
  def validate!(opts) do
    Drove.Options.known!(opts, @known, "Drove.Registry")

    # its tables are named :"keys_#{name}" and :"members_#{name}", atoms of <= 255 chars
    name = Keyword.get(opts, :name)

    unless is_atom(name) and name != nil and byte_size(Atom.to_string(name)) <= 200 do
      raise ArgumentError,
            "a registry needs a :name that is an atom of at most 200 bytes, got: #{inspect(name)}"
    end

    case Keyword.get(opts, :keys) do
      :unique ->
        :ok

      other ->
        raise ArgumentError,
              "Drove.Registry only supports keys: :unique, got: #{inspect(other)}"
    end

    case Keyword.get(opts, :members, []) do
      :auto -> :ok
      l when is_list(l) -> Enum.each(l, &normalize_member!(&1, opts[:name]))
      o -> raise ArgumentError, ":members must be :auto or a list, got: #{inspect(o)}"
    end

    unless is_list(Keyword.get(opts, :listeners, [])) and
             Enum.all?(Keyword.get(opts, :listeners, []), &is_atom/1) do
      raise ArgumentError, ":listeners must be a list of local names (atoms)"
    end

    case Keyword.get(opts, :meta, []) do
      l when is_list(l) -> Enum.each(l, &meta_pair!/1)
      o -> raise ArgumentError, ":meta must be a list of {key, value}, got: #{inspect(o)}"
    end

    Drove.Options.replication!(opts)
    opts
  end

  defp meta_pair!({_, _}), do: :ok

  defp meta_pair!(o),
    do: raise(ArgumentError, ":meta must be a list of {key, value}, got: #{inspect(o)}")

  @doc false
  @spec normalize_member!(term(), atom()) :: {atom(), node()}
  def normalize_member!(name, _own) when is_atom(name), do: {name, node()}
  def normalize_member!({name, node} = m, _own) when is_atom(name) and is_atom(node), do: m

  def normalize_member!(other, _own) do
    raise ArgumentError, "a member is a name or {name, node}, got: #{inspect(other)}"
  end

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.fetch!(opts, :name))
  end

  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(opts) do
    %{
      id: __MODULE__,
      start: {__MODULE__, :start_link, [opts]},
      shutdown: Keyword.get(opts, :shutdown, 15_000)
    }
  end

  # ------------------------------------------------------------------ init

  @impl true
  def init(opts) do
    # deltas arrive in bursts: kept off the heap, queued messages are not copied by every
    # garbage collection while they wait
    Process.flag(:message_queue_data, :off_heap)
    name = Keyword.fetch!(opts, :name)
    table_opts = [:named_table, :set, :public, read_concurrency: true]
    :ets.new(name, table_opts)
    # Read by every lookup (a via call is one), written by every registrant. With
    # write_concurrency, registrants on different schedulers do not queue for one table lock
    # (a burst of registrations spends a fraction of the time in the insert, and the
    # registration rate of bench/registry.exs rises); a lookup then takes a bucket lock too,
    # a few tens of nanoseconds; read_concurrency keeps hot names cheap to read from many
    # cores at once.
    keys = :"keys_#{name}"
    :ets.new(keys, [{:write_concurrency, :auto} | table_opts])
    :ets.new(:"members_#{name}", table_opts)
    :persistent_term.put({Reg, :keys, name}, keys)
    # registrants tell this process of each registration only when it has listeners to notify
    :persistent_term.put({Reg, :notify, name}, Keyword.get(opts, :listeners, []) != [])

    {handle, repl} =
      Drove.Owner.open(
        label: name,
        interval: Keyword.get(opts, :sync_interval, 500),
        max_bytes: Keyword.get(opts, :max_message_bytes, 1_048_576),
        want_diffs: true,
        flusher: true
      )

    :ok = Native.watch(handle, self())
    server = self()
    guard = spawn_link(fn -> guard(server, handle, name) end)
    Handles.register(name, self(), handle)
    :ok = :net_kernel.monitor_nodes(true, node_type: :visible)

    s = %{
      name: name,
      handle: handle,
      repl: repl,
      me: {name, node()},
      auto: Keyword.get(opts, :members) == :auto,
      listeners: Keyword.get(opts, :listeners, []),
      parent: Drove.Replicator.parent(),
      guard: guard,
      creations: %{}
    }

    members =
      case Keyword.get(opts, :members, []) do
        :auto -> for n <- [node() | Node.list()], do: {name, n}
        list -> Enum.map(list, &normalize_member!(&1, name))
      end

    s = apply_members(s, members)
    Enum.each(Keyword.get(opts, :meta, []), fn {k, v} -> put_meta(s, k, v) end)
    Enum.each(Node.list(), &fetch_creation/1)
    {:ok, s}
  end

  # ------------------------------------------------------------------ calls

  @impl true
  def handle_call({:set_members, members}, _from, s) do
    members = Enum.map(members, &normalize_member!(&1, s.name))
    {:reply, :ok, apply_members(s, members)}
  end

  def handle_call(:members, _from, s), do: {:reply, current_members(s), s}

  def handle_call({:put_meta, k, v}, _from, s) do
    put_meta(s, k, v)
    {:reply, :ok, s}
  end

  def handle_call({:delete_meta, k}, _from, s) do
    :ok = Native.delete(s.handle, Entry.meta_key(k))
    :ets.delete(s.name, k)
    {:reply, :ok, s}
  end

  def handle_call({:reap, key, holder}, _from, s) do
    {:reply, :ok, reap(s, key, holder)}
  end

  def handle_call(:info, _from, s) do
    info =
      s.handle
      |> Native.info()
      |> Map.merge(Replicator.info(s.repl))
      |> Map.merge(%{members: current_members(s)})

    {:reply, info, s}
  end

  def handle_call(other, from, s), do: Drove.Owner.handle_call(other, from, s)

  @impl true
  def handle_cast(msg, s), do: Drove.Owner.handle_cast(msg, s)

  # ------------------------------------------------------------------ info

  @impl true
  def handle_info({:registered, pid, key, value}, s) do
    # A remote registration of the same key joined since the caller's write may have won
    # it, and the caller's table write may have landed after ours: check with the replica.
    # (A registrant sends this only after such a lost race, or when there are listeners,
    # or for another pid: the common registration costs this process nothing.)
    case Native.get(s.handle, Entry.key(key)) do
      {:ok, {^pid, _}} ->
        notify(s, {:register, s.name, key, pid, value})

      {:ok, {winner, {wvalue, wowner}}} ->
        if match?([{_, _, {^pid, _}}], :ets.lookup(Reg.keys_table(s.name), key)) do
          show(s, key, winner, wvalue, wowner)
        end

        lose(s, key, pid, value, winner)

      :error ->
        :ok
    end

    {:noreply, s}
  end

  def handle_info({:unregistered, pid, key, _value}, s) do
    notify(s, {:unregister, s.name, key, pid})
    {:noreply, s}
  end

  # Exits of registrants: dropped from the replica already (by the exiting processes, see
  # Native.watch); their rows are deleted here, the whole batch at once.
  def handle_info(:drove_gone, s) do
    case Native.take_gone(s.handle) do
      {:error, reason} -> raise "Drove.Registry native error: #{inspect(reason)}"
      gone -> {:noreply, rows_gone(s, gone)}
    end
  end

  # The parent (supervisor), the flusher or the guard going away stops this process. Nothing
  # else is linked to it but processes that linked themselves: their exits, and {:EXIT, _, _}
  # messages anyone could send (a peer knows every registered pid), say nothing about
  # registrations, which go only when the registrant's monitor fires.
  def handle_info({:EXIT, pid, reason}, s) do
    cond do
      pid == s.parent or pid == s.repl.flusher or pid == s.guard -> {:stop, reason, s}
      # made up: a process of another node exiting is not a local registrant's exit
      node(pid) != node() -> {:noreply, %{s | repl: Replicator.bad_message(s.repl, {:exit, pid})}}
      true -> {:noreply, s}
    end
  end

  def handle_info({:nodedown, node, _}, s) do
    s = %{s | creations: Map.delete(s.creations, node)}
    {:noreply, s |> hide_node(node) |> auto_members()}
  end

  def handle_info({:nodeup, node, _}, s) do
    fetch_creation(node)
    {:noreply, auto_members(s)}
  end

  # A node's entries are shown only once its current incarnation is known: a node restarted
  # under the same name must not bring back the pids of its previous life.
  def handle_info({:node_creation, node, creation}, s) do
    if node in Node.list() do
      {:noreply, show_node(%{s | creations: Map.put(s.creations, node, creation)}, node)}
    else
      {:noreply, s}
    end
  end

  def handle_info(msg, s), do: Drove.Owner.handle_info(__MODULE__, msg, s)

  @impl Drove.Owner
  def handle_diffs(diffs, s), do: Enum.reduce(diffs, s, &apply_diff/2)

  @impl true
  def terminate(reason, s) do
    # this registry stops: its registrations go, everywhere, and its registrants get the exit
    # signal a link to this process would give them (as in Horde, whose registrants are
    # linked); the guard does that instead if this process is killed
    :ok = Native.unwatch(s.handle)
    registrants = local_registrants(s.handle, s.name)
    Native.drop_owned(s.handle, registrants)
    Native.delete(s.handle, Entry.member_key(s.me))
    Drove.Owner.close(s)
    Enum.each(registrants, &Process.exit(&1, reason))
    :ok
  end

  # Linked to the registry process and trapping exits: when it dies without its terminate/2
  # (killed), gives each local process still registered in its replica the exit signal a
  # link would have, then goes too. (The signal comes from this process, not from the
  # registry's pid.) Its own death stops the registry process.
  defp guard(server, handle, name) do
    Process.flag(:trap_exit, true)

    receive do
      {:EXIT, ^server, reason} ->
        :ok = Native.unwatch(handle)
        reason = if reason == :kill, do: :killed, else: reason
        Enum.each(local_registrants(handle, name), &Process.exit(&1, reason))
    end
  end

  # The local processes registered through this instance (not through another member of
  # the registry on this node).
  defp local_registrants(handle, name) do
    handle
    |> Native.to_list()
    |> Enum.flat_map(fn
      {{:key, _}, {pid, {_, ^name}}} when is_pid(pid) and node(pid) == node() -> [pid]
      _ -> []
    end)
    |> Enum.uniq()
  end

  # ------------------------------------------------------------------ diffs

  defp apply_diff({:add, {:key, key}, {pid, {value, owner}}}, s)
       when is_pid(pid) and is_atom(owner) do
    cond do
      node(pid) == node() and not Process.alive?(pid) ->
        # a registration of a process of this node that is gone (an earlier incarnation
        # of this registry, or a race with its exit): this node owns it, so removes it
        # (own/3 answers :noproc for one that exits from now on)
        reap(s, key, pid)

      node(pid) != node() and Map.get(s.creations, node(pid)) != creation(pid) ->
        # its node is not connected, or its incarnation is not known yet (shown on
        # :node_creation), or it is from an earlier incarnation (dropped there). It is not
        # shown, but the replica chose it: whoever the table held for the key lost.
        case current_row(s, key) do
          {^pid, _, _} ->
            s

          {_, _, _} = old ->
            :ets.delete(Reg.keys_table(s.name), key)
            evict(s, key, old, pid)

          nil ->
            s
        end

      true ->
        adopt(s, key, pid, value, owner)
    end
  end

  defp apply_diff({:remove, {:key, key}}, s) do
    table = Reg.keys_table(s.name)

    case :ets.lookup(table, key) do
      [{_, {owner, _}, {pid, value}} = row] ->
        if owner == s.name and node(pid) == node() and Process.alive?(pid) do
          # someone removed the element of a live registrant of ours: it still holds the key
          # (another member on this node does not: the registrant may have unregistered
          # through the member it registered with)
          Native.put(s.handle, Entry.key(key), Entry.value(pid, value, owner))
          s
        else
          :ets.delete_object(table, row)
          disown(s, pid, key)
          notify(s, {:unregister, s.name, key, pid})
          s
        end

      [] ->
        s
    end
  end

  defp apply_diff({:add, {:member, m}, _}, s), do: s |> member_row(m, true) |> sync_neighbours()
  defp apply_diff({:remove, {:member, m}}, s), do: s |> member_row(m, false) |> sync_neighbours()

  defp apply_diff({:add, {:meta, k}, v}, s) do
    :ets.insert(s.name, {k, v})
    s
  end

  defp apply_diff({:remove, {:meta, k}}, s) do
    :ets.delete(s.name, k)
    s
  end

  defp apply_diff(other, s) do
    %{s | repl: Replicator.bad_message(s.repl, {:unexpected_entry, other})}
  end

  # The replica's winner for `key` is `pid`: show it, and evict whoever the table held. It is
  # filed first (a local process is watched from then on; one already gone is reaped instead).
  defp adopt(s, key, pid, value, owner) do
    if own(s, key, pid) == :noproc do
      reap(s, key, pid)
    else
      table = Reg.keys_table(s.name)
      row = Entry.row(key, pid, value, owner)

      # the common case, a key the table does not show yet: one table call
      if :ets.insert_new(table, row) do
        notify(s, {:register, s.name, key, pid, value})
        s
      else
        replace(s, table, row)
      end
    end
  end

  # Writes `row` (a registration already filed) over the row the table held for its key.
  defp replace(s, table, {key, _member, {pid, value}} = row) do
    previous = current_row(s, key)
    :ets.insert(table, row)

    case previous do
      {^pid, _, _} ->
        s

      {_, _, _} = old ->
        s = evict(s, key, old, pid)
        notify(s, {:register, s.name, key, pid, value})
        s

      nil ->
        notify(s, {:register, s.name, key, pid, value})
        s
    end
  end

  # Files key under pid in the replica's index (a local pid is watched from then on):
  # :ok, or :noproc for a local process that is gone (nothing filed).
  defp own(s, key, pid) do
    case Native.own(s.handle, Entry.key(key), pid) do
      :ok -> :ok
      :noproc -> :noproc
      {:error, reason} -> raise "Drove.Registry native error: #{inspect(reason)}"
    end
  end

  # {pid, value, owner} of the row the table shows for key, or nil
  defp current_row(s, key) do
    case :ets.lookup(Reg.keys_table(s.name), key) do
      [{_, {owner, _}, {pid, value}}] -> {pid, value, owner}
      [] -> nil
    end
  end

  defp show(s, key, pid, value, owner) do
    :ets.insert(Reg.keys_table(s.name), Entry.row(key, pid, value, owner))

    # a local winner that exited meanwhile: its exit dropped what it had filed, not this
    if own(s, key, pid) == :noproc, do: reap(s, key, pid)
  end

  # Deletes the row of key only if it still shows pid's registration: a registrant writes
  # its row from its own process, and may just have registered the key anew.
  defp delete_row(table, key, pid) do
    case :ets.lookup(table, key) do
      [{_, _, {^pid, _}} = row] -> :ets.delete_object(table, row)
      _ -> true
    end
  end

  defp disown(s, pid, key), do: :ok = Native.disown(s.handle, Entry.key(key), pid)

  # `old` no longer holds `key` (the replica chose `winner`): drop its row, and if it is a
  # live process of this node, it lost a conflict.
  # The member it registered through (the owner) tells a live loser, with the exit signal.
  defp evict(s, key, {old, old_value, old_owner}, winner) do
    disown(s, old, key)
    notify(s, {:unregister, s.name, key, old})

    if old_owner == s.name and node(old) == node() and Process.alive?(old) do
      lose(s, key, old, old_value, winner)
    else
      s
    end
  end

  defp lose(s, key, pid, value, winner) do
    Drove.Telemetry.conflict(s.name, key, pid, winner)
    Native.remove_value(s.handle, Entry.key(key), Entry.value(pid, value, s.name))
    disown(s, pid, key)
    Process.exit(pid, {:name_conflict, {key, value}, s.name, winner})
    s
  end

  defp reap(s, key, pid) do
    case Native.get(s.handle, Entry.key(key)) do
      {:ok, {^pid, _} = held} ->
        Native.remove_value(s.handle, Entry.key(key), Native.value(held))

      _ ->
        :ok
    end

    case current_row(s, key) do
      {^pid, _, _} ->
        delete_row(Reg.keys_table(s.name), key, pid)
        notify(s, {:unregister, s.name, key, pid})

      _ ->
        :ok
    end

    disown(s, pid, key)
    s
  end

  # `gone`: the registrations that exits dropped from the replica (take_gone): delete the rows
  # that still show them, and tell the listeners.
  defp rows_gone(s, []), do: s

  defp rows_gone(%{listeners: ls} = s, gone) do
    table = Reg.keys_table(s.name)

    Enum.each(gone, fn {{:key, key}, pid} ->
      delete_row(table, key, pid)
      if ls != [], do: notify(s, {:unregister, s.name, key, pid})
    end)

    s
  end

  # ------------------------------------------------------------------ nodes

  defp hide_node(s, node) do
    table = Reg.keys_table(s.name)
    rows = :ets.select(table, [{{:_, :_, {:"$1", :_}}, [{:==, {:node, :"$1"}, node}], [:"$_"]}])

    Enum.each(rows, fn {key, _m, {pid, _v}} = row ->
      :ets.delete_object(table, row)
      disown(s, pid, key)
      notify(s, {:unregister, s.name, key, pid})
    end)

    s
  end

  defp show_node(s, node) do
    current = Map.get(s.creations, node)

    {live, stale} =
      s.handle
      |> Native.to_list()
      |> Enum.flat_map(fn
        {{:key, key}, {pid, {_, _} = held}} when is_pid(pid) and node(pid) == node ->
          [{key, pid, held}]

        _ ->
          []
      end)
      |> Enum.split_with(fn {_, pid, _} -> creation(pid) == current end)

    # pids of an earlier incarnation of the node are dead for sure: drop them for good
    pairs = for {key, pid, held} <- stale, do: {Entry.key(key), Native.value({pid, held})}

    :ok = Native.remove_values(s.handle, pairs)

    # the replica's winners: a conflict with a registration made here while the node was
    # away is resolved now (its diff was held back until the node's incarnation was known)
    Enum.reduce(live, s, fn {key, pid, {value, owner}}, s -> adopt(s, key, pid, value, owner) end)
  end

  # The creation of the node's current incarnation, learned from a process that lives as
  # long as the node (init), by one call per nodeup rather than one per lookup.
  defp fetch_creation(node) do
    server = self()

    spawn(fn ->
      try do
        pid = :erpc.call(node, :erlang, :whereis, [:init], 5000)
        if is_pid(pid), do: send(server, {:node_creation, node, creation(pid)})
      catch
        # the node went away again: its nodedown follows
        _, _ -> :ok
      end
    end)
  end

  @doc false
  # The creation stamped in a pid's external format (its last 4 bytes, NEW_PID_EXT).
  @spec creation(pid()) :: binary()
  def creation(pid) do
    bin = :erlang.term_to_binary(pid)
    binary_part(bin, byte_size(bin) - 4, 4)
  end

  # ------------------------------------------------------------------ members

  defp auto_members(%{auto: true} = s) do
    apply_members(s, for(n <- [node() | Node.list()], do: {s.name, n}))
  end

  defp auto_members(s), do: s

  # Sets this node's view of the members: adds and removes {:member, m} keys (replicated,
  # add-wins), and makes every member a sync neighbour. Never touches registrations.
  defp apply_members(s, members) do
    {added, removed} = Drove.Cluster.write_members(s.handle, current_members(s), [s.me | members])
    Drove.Telemetry.members(s.name, [s.me | members], {added, removed})

    Enum.each(added, &member_row(s, &1, true))
    Enum.each(removed, &member_row(s, &1, false))
    sync_neighbours(s)
  end

  defp member_row(s, m, true) do
    :ets.insert(Reg.members_table(s.name), {m, 1})
    s
  end

  defp member_row(s, m, false) do
    :ets.delete(Reg.members_table(s.name), m)
    s
  end

  defp current_members(s) do
    s.name |> Reg.members_table() |> :ets.tab2list() |> Enum.map(&elem(&1, 0)) |> Enum.sort()
  end

  defp sync_neighbours(s) do
    neighbours = for m <- current_members(s), m != s.me, do: m
    %{s | repl: Replicator.set_neighbours(s.repl, neighbours, s.name)}
  end

  defp put_meta(s, k, v) do
    :ok = Native.put(s.handle, Entry.meta_key(k), Native.value(v))
    :ets.insert(s.name, {k, v})
  end

  defp notify(%{listeners: []}, _msg), do: :ok
  defp notify(%{listeners: ls}, msg), do: Enum.each(ls, &Kernel.send(&1, msg))
end

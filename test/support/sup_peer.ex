defmodule Drove.Test.Worker do
  @moduledoc false
  # A child for supervisor tests. It registers itself locally under its tag (an atom), so a
  # test can see on which nodes a given child runs, and it obeys :crash / :stop_normal.
  # With {tag, restart, :handoff} its spec has handoff: true: it hands over how many times it
  # moved with its state, and counts the states delivered to it (never more than one).
  use GenServer

  def child_spec({tag, restart, :handoff}),
    do: Map.put(child_spec({tag, restart}), :handoff, true)

  @spec child_spec({atom(), atom()}) :: Supervisor.child_spec()
  def child_spec({tag, restart}) do
    %{id: tag, start: {__MODULE__, :start_link, [tag]}, restart: restart}
  end

  @spec start_link(atom()) :: GenServer.on_start()
  def start_link(tag), do: GenServer.start_link(__MODULE__, tag, name: tag)

  @doc "A start that answers `{:ok, pid, {:info, tag}}`, `:ignore` or `{:error, tag}`."
  @spec start_answering(:info | :ignore | :error, atom()) ::
          {:ok, pid(), {:info, atom()}} | :ignore | {:error, atom()}
  def start_answering(:info, tag) do
    {:ok, pid} = start_link(tag)
    {:ok, pid, {:info, tag}}
  end

  def start_answering(:ignore, _tag), do: :ignore
  def start_answering(:error, tag), do: {:error, tag}

  @spec start_link(term(), atom()) :: GenServer.on_start()
  def start_link(extra, tag), do: GenServer.start_link(__MODULE__, {extra, tag}, name: tag)

  @impl true
  def init({{:sleep_on, node, ms} = extra, tag}) do
    if node() == node, do: Process.sleep(ms)
    {:ok, %{tag: tag, extra: extra}}
  end

  def init({{:slow_stop, _ms} = extra, tag}) do
    Process.flag(:trap_exit, true)
    {:ok, %{tag: tag, extra: extra}}
  end

  def init({extra, tag}), do: {:ok, %{tag: tag, extra: extra}}
  def init(tag), do: {:ok, %{tag: tag, extra: nil}}

  @impl true
  def handle_call(:extra, _from, s), do: {:reply, s.extra, s}
  def handle_call(:delivered, _from, s), do: {:reply, Map.get(s, :delivered, 0), s}

  def handle_call({:drove, :begin_handoff}, _from, s),
    do: {:reply, {:resume, Map.get(s, :moves, 0) + 1}, s}

  @impl true
  def terminate(_reason, %{extra: {:slow_stop, ms}}), do: Process.sleep(ms)
  def terminate(_reason, _s), do: :ok

  @impl true
  def handle_cast(:crash, s), do: {:stop, :crashed, s}
  def handle_cast(:stop_normal, s), do: {:stop, :normal, s}
  def handle_cast({:stop, reason}, s), do: {:stop, reason, s}

  def handle_cast({:drove, :end_handoff, moves}, s),
    do: {:noreply, s |> Map.put(:moves, moves) |> Map.update(:delivered, 1, &(&1 + 1))}
end

defmodule Drove.Test.SupPeer do
  @moduledoc false
  # Runs ON peer nodes: starts a Drove.DynamicSupervisor under the :drove application's
  # supervisor (so it outlives the RPC that started it, and :init.stop/0 stops it gracefully,
  # as a host application's tree would be), and reports what runs here.

  @spec start(atom(), keyword()) :: pid()
  def start(name, opts) do
    spec =
      Supervisor.child_spec(
        {Drove.DynamicSupervisor, [name: name, strategy: :one_for_one] ++ opts},
        id: {:sup, name},
        restart: :temporary
      )

    {:ok, pid} = Supervisor.start_child(Drove.Supervisor, spec)
    pid
  end

  @spec stop(atom()) :: :ok
  def stop(name) do
    :ok = Supervisor.terminate_child(Drove.Supervisor, {:sup, name})
    _ = Supervisor.delete_child(Drove.Supervisor, {:sup, name})
    :ok
  end

  @doc "Starts `count` workers tagged `prefix_i` through this node; returns their tags."
  @spec start_workers(atom(), String.t(), Range.t(), atom()) :: [atom()]
  def start_workers(name, prefix, range, restart) do
    for i <- range do
      tag = :"#{prefix}_#{i}"
      {:ok, _} = Drove.DynamicSupervisor.start_child(name, {Drove.Test.Worker, {tag, restart}})
      tag
    end
  end

  @doc "Which of `tags` run on this node and were delivered more than one handed-over state."
  @spec delivered_twice([atom()]) :: [atom()]
  def delivered_twice(tags) do
    Enum.filter(tags, fn tag ->
      case Process.whereis(tag) do
        nil -> false
        pid -> GenServer.call(pid, :delivered) > 1
      end
    end)
  catch
    # a child that stopped meanwhile
    :exit, _ -> []
  end

  @doc "Which of `tags` run on this node."
  @spec running([atom()]) :: [atom()]
  def running(tags), do: Enum.filter(tags, &(Process.whereis(&1) != nil))

  @doc "The replicated child entries as seen here: `%{tag => {child_id, owner_node}}`."
  @spec entries(atom()) :: %{atom() => {term(), node() | nil}}
  def entries(name) do
    for {id, owner, spec, _pid} <- GenServer.call(name, :children), into: %{} do
      {tag(spec), {id, owner && elem(owner, 1)}}
    end
  end

  @doc """
  Writes child `tag`'s entry in this node's replica, as a claim by the instance on
  `owner_node` (or a hand-over, with `nil`), behind the back of this node's instance: only
  the peers see the change (as if a third member had written it), for tests of how the
  owners settle concurrent claims.
  """
  @spec forge_owner(atom(), atom(), node() | nil) :: :ok
  def forge_owner(name, tag, owner_node) do
    [{id, spec, pid}] =
      for {id, _owner, spec, pid} <- GenServer.call(name, :children),
          tag(spec) == tag,
          do: {id, spec, pid}

    owner = if owner_node, do: {name, owner_node}, else: nil
    {_, h} = Drove.Handles.lookup(name)
    value = Drove.Native.value({owner, spec, if(owner, do: pid)})
    :ok = Drove.Native.put(h, Drove.Native.key({:child, id}), value)
  end

  # a Drove.Test.Worker's tag is the last argument of its start function
  defp tag(%{start: {_, _, args}}), do: List.last(args)

  @doc "Whether `sup` knows of `count` members, all :alive."
  @spec all_alive?(atom(), pos_integer()) :: boolean()
  def all_alive?(sup, count) do
    statuses = for {_, m} <- :sys.get_state(sup).members_info, do: m.status
    length(statuses) == count and Enum.all?(statuses, &(&1 == :alive))
  end

  @doc "The status `sup` sees for `member` (nil when it does not know it)."
  @spec status(atom(), {atom(), node()}) :: atom() | nil
  def status(sup, member) do
    case :sys.get_state(sup).members_info do
      %{^member => m} -> m.status
      _ -> nil
    end
  end

  @doc """
  Whether instance `sup` is at rest here: no child of its being started, restarted or
  stopped; every entry owned by one of the members `alive` (or by a member on one of them,
  for nodes); the children it runs exactly those whose entries name it. With equal replicas on every node (`digest/1`) and
  every member :alive, nothing more happens to any child until something changes: the
  positive form of "no late takeover, eviction or restart".
  """
  @spec at_rest?(atom(), [node() | {atom(), node()}]) :: boolean()
  def at_rest?(sup, alive) do
    s = :sys.get_state(sup)
    entries = :ets.tab2list(s.children)
    mine = for {id, owner, _, _} <- entries, owner == s.me, into: MapSet.new(), do: id
    running = for {id, {p, _}} <- s.local, into: MapSet.new(), do: {id, is_pid(p)}

    s.stopping == %{} and MapSet.new(mine, &{&1, true}) == running and
      Enum.all?(entries, fn {_, owner, _, _} ->
        owner != nil and (owner in alive or elem(owner, 1) in alive)
      end)
  end

  @doc "The digest of `sup`'s replica here."
  @spec digest(atom()) :: binary()
  def digest(sup), do: Drove.Native.digest(elem(Drove.Handles.lookup(sup), 1))

  @spec statuses(atom()) :: %{node() => atom()}
  def statuses(name) do
    for {{_, n}, m} <- :sys.get_state(name).members_info, into: %{}, do: {n, m.status}
  end
end

defmodule Drove.Test.PinStrategy do
  @moduledoc false
  # A distribution strategy for tests: a child whose id is `{:pin, node}` goes to the member
  # on that node; anything else as Drove.Distribution.Uniform places it.
  @behaviour Drove.DistributionStrategy

  @impl true
  def choose_node(%{id: {:pin, node}}, members) do
    case Enum.find(members, &match?(%{name: {_, ^node}, status: :alive}, &1)) do
      nil -> {:error, :no_alive_nodes}
      member -> {:ok, member}
    end
  end

  # `{:pin_or_any, node}`: on that node while it is alive, else anywhere
  def choose_node(%{id: {:pin_or_any, node}} = spec, members) do
    case choose_node(%{spec | id: {:pin, node}}, members) do
      {:ok, _} = ok -> ok
      {:error, _} -> Drove.Distribution.Uniform.choose_node(spec, members)
    end
  end

  def choose_node(spec, members), do: Drove.Distribution.Uniform.choose_node(spec, members)

  @impl true
  def has_quorum?(_members), do: true

  @impl true
  def deterministic?, do: true
end

defmodule Drove.Test.DurablePeer do
  @moduledoc false
  # Runs ON a peer: starts a child pinned to `target` and, the moment start_child answers,
  # looks for its entry in this node's replica and in `witness`'s: whether {:ok, pid} came
  # only once another member than the child's held the entry.
  @spec start_and_look(atom(), node(), node(), atom()) :: {term(), boolean(), boolean()}
  def start_and_look(sup, target, witness, tag) do
    spec = %{id: {:pin, target}, start: {Drove.Test.Worker, :start_link, [tag]}}
    result = Drove.DynamicSupervisor.start_child(sup, spec)
    {:ok, pid} = result
    here = has_pid?(GenServer.call(sup, :children), pid)
    there = has_pid?(GenServer.call({sup, witness}, :children), pid)
    {result, here, there}
  end

  @doc """
  Starts a child pinned to `target` whose start answers `how` (see
  `Drove.Test.Worker.start_answering/2`); returns start_child's answer and, for a child
  that runs, whether its entry is on this node and on `witness` at that moment.
  """
  @spec start_answering(atom(), node(), node(), atom(), atom()) :: {term(), boolean(), boolean()}
  def start_answering(sup, target, witness, how, tag) do
    spec = %{id: {:pin, target}, start: {Drove.Test.Worker, :start_answering, [how, tag]}}

    case Drove.DynamicSupervisor.start_child(sup, spec) do
      {:ok, pid, _info} = result ->
        here = has_pid?(GenServer.call(sup, :children), pid)
        there = has_pid?(GenServer.call({sup, witness}, :children), pid)
        {result, here, there}

      other ->
        {other, false, false}
    end
  end

  @doc """
  Starts a child pinned to `target` from a new process, which sends `report_to`
  `{:returned, result}` as soon as start_child has answered, then
  `{:started, result, entry_here?}`.
  """
  @spec start_async(atom(), node() | {:pin_or_any, node()}, atom(), pid()) :: :ok
  def start_async(sup, target, tag, report_to) do
    spawn(fn ->
      id = if is_tuple(target), do: target, else: {:pin, target}
      spec = %{id: id, start: {Drove.Test.Worker, :start_link, [tag]}}
      result = Drove.DynamicSupervisor.start_child(sup, spec)
      send(report_to, {:returned, result})
      {:ok, pid} = result
      send(report_to, {:started, result, has_pid?(GenServer.call(sup, :children), pid)})
    end)

    :ok
  end

  defp has_pid?(entries, pid), do: Enum.any?(entries, &match?({_, _, _, ^pid}, &1))
end

defmodule Drove.Test.ChaosPeer do
  @moduledoc false
  # Runs ON peer nodes for the chaos test: the members of a Drove.Registry and of a
  # Drove.DynamicSupervisor under the :drove application's supervisor (one or two of each per
  # node), and the operations the test's load runs, through any of this node's members.

  # The layouts: one member of each instance per node, or two (Horde's `:reg1, :reg2` on one
  # node), every member of an instance a member of all the others.
  @layouts %{
    single: {[ChaosReg], [ChaosSup]},
    pair: {[ChaosReg, ChaosReg2], [ChaosSup, ChaosSup2]}
  }

  @spec start([node()], :single | :pair) :: :ok
  def start(nodes, layout \\ :single) do
    {regs, sups} = Map.fetch!(@layouts, layout)
    :persistent_term.put({__MODULE__, :layout}, {regs, sups})

    instances =
      Enum.map(regs, &{Drove.Registry, &1, regs, [keys: :unique]}) ++
        Enum.map(sups, &{Drove.DynamicSupervisor, &1, sups, [strategy: :one_for_one]})

    for {mod, name, names, opts} <- instances do
      members = for n <- nodes, m <- names, do: {m, n}

      spec =
        Supervisor.child_spec({mod, [name: name, members: members] ++ opts},
          id: {:chaos, name},
          restart: :temporary
        )

      {:ok, _} = Supervisor.start_child(Drove.Supervisor, spec)
    end

    :ok
  end

  defp regs, do: elem(:persistent_term.get({__MODULE__, :layout}), 0)
  defp sups, do: elem(:persistent_term.get({__MODULE__, :layout}), 1)
  # the member an operation goes through: any of this node's
  defp any(names), do: Enum.random(names)

  @doc """
  Registers `key` from a new long-lived process of this node; returns `{result, pid}`. The
  process stays alive while it holds the key (and dies if it loses it in a conflict).
  """
  @spec register(term()) :: {term(), pid()}
  def register(key) do
    parent = self()
    ref = make_ref()

    pid =
      spawn(fn ->
        result = Drove.Registry.register(any(regs()), key, nil)
        send(parent, {ref, result})
        if match?({:ok, _}, result), do: Process.sleep(:infinity)
      end)

    receive do
      {^ref, result} -> {result, pid}
    after
      10_000 -> {:timeout, pid}
    end
  end

  @doc "The lookup of `key` through every member here; `{:members_disagree, _}` if they differ."
  @spec lookup(term()) :: [{pid(), term()}] | {:members_disagree, list()}
  def lookup(key) do
    case regs() |> Enum.map(&Drove.Registry.lookup(&1, key)) |> Enum.uniq() do
      [one] -> one
      many -> {:members_disagree, many}
    end
  end

  # about half the children have handoff: true (chosen by tag, the same on every node)
  @spec start_child(atom(), atom()) :: term()
  def start_child(tag, restart) do
    arg = if :erlang.phash2(tag, 2) == 0, do: {tag, restart, :handoff}, else: {tag, restart}
    Drove.DynamicSupervisor.start_child(any(sups()), {Drove.Test.Worker, arg})
  end

  @doc "Which of `tags` run here."
  @spec running([atom()]) :: [atom()]
  def running(tags), do: Enum.filter(tags, &(Process.whereis(&1) != nil))

  @doc "Stops the local child `tag` with reason :normal; returns whether it ran here."
  @spec stop_normal(atom()) :: boolean()
  def stop_normal(tag) do
    case Process.whereis(tag) do
      nil ->
        false

      pid ->
        ref = Process.monitor(pid)
        GenServer.cast(pid, :stop_normal)

        receive do
          {:DOWN, ^ref, :process, ^pid, _} -> true
        after
          5000 -> false
        end
    end
  end

  @doc "Tags of the child entries this node's replica holds."
  @spec child_tags() :: MapSet.t()
  def child_tags do
    for {_, _, spec, _} <- GenServer.call(hd(sups()), :children), into: MapSet.new() do
      {_, _, [tag]} = spec.start
      tag
    end
  end

  @doc "`%{tag => owner node}` of the child entries here."
  @spec owners() :: %{atom() => node() | nil}
  def owners do
    for {_, owner, spec, _} <- GenServer.call(hd(sups()), :children), into: %{} do
      {_, _, [tag]} = spec.start
      {tag, owner && elem(owner, 1)}
    end
  end

  @doc "The entry of child `tag` here (for diagnostics)."
  @spec entry(atom()) :: term()
  def entry(tag) do
    for {id, owner, spec, pid} <- GenServer.call(hd(sups()), :children),
        spec.start == {Drove.Test.Worker, :start_link, [tag]} do
      {id, owner, pid, pid && node(pid) == node() && Process.alive?(pid)}
    end
  end

  @doc """
  What this node's supervisor instance knows of child `tag` (for diagnostics): its entry,
  the instance's local state for it, whether the instance is ready, and its view of the
  entry owner's status.
  """
  @spec diagnose(atom()) :: map()
  def diagnose(tag) do
    s = :sys.get_state(hd(sups()))

    for {id, owner, _pid, _alive} = e <- entry(tag), into: %{} do
      status = Enum.find_value(s.members_info, fn {m, i} -> if m == owner, do: i.status end)

      {id,
       %{
         entry: e,
         local: Map.get(s.local, id),
         stopping: Map.get(s.stopping, id),
         by_pid: for({p, ^id} <- s.by_pid, do: p),
         ready: s.ready,
         owner_status: status,
         owner_info: Map.get(s.infos, owner)
       }}
    end
  end

  @doc "Replication figures of this node's supervisor instances (for diagnostics)."
  @spec sup_info() :: map()
  def sup_info do
    keys = [:bad_messages, :deltas_in, :deltas_out, :rounds, :rounds_done, :neighbours_up]

    for sup <- sups(), into: %{} do
      info = GenServer.call(sup, :info)

      {sup,
       info
       |> Map.take(keys)
       |> Map.put(:digest, Base.encode16(Drove.Native.digest(elem(Drove.Handles.lookup(sup), 1))))}
    end
  end

  @doc "The distinct digests of the registry's and the supervisor's replicas here."
  @spec digests() :: {[binary()], [binary()]}
  def digests do
    digest = fn name -> Drove.Native.digest(elem(Drove.Handles.lookup(name), 1)) end
    {regs() |> Enum.map(digest) |> Enum.uniq(), sups() |> Enum.map(digest) |> Enum.uniq()}
  end

  @doc """
  The members that the supervisor instances here do not see :alive, with what they know of
  each (for diagnostics): `%{sup => [{member, status, info, pid dead?, node up?}]}`.
  """
  @spec unsettled() :: map()
  def unsettled do
    for sup <- sups(), into: %{} do
      s = :sys.get_state(sup)

      {sup,
       for {m, %{status: st}} <- s.members_info, st != :alive do
         info = Map.get(s.infos, m)
         pid = info && elem(info, 1)
         {m, st, info, pid && MapSet.member?(s.dead, pid), Drove.Liveness.node_up?(elem(m, 1))}
       end}
    end
  end

  @doc "Whether every member of both instances is :alive here."
  @spec settled?([node()]) :: boolean()
  def settled?(nodes) do
    expected = for n <- nodes, m <- sups(), do: {m, n}

    Enum.all?(sups(), fn sup ->
      statuses = for {_, m} <- :sys.get_state(sup).members_info, m.name in expected, do: m.status

      length(statuses) == length(expected) and Enum.all?(statuses, &(&1 == :alive))
    end)
  end
end

defmodule Drove.Test.ChaosTrace do
  @moduledoc false
  # Diagnostics for the chaos test (DROVE_CHAOS_TRACE=1): call-traces the supervisor
  # instance's decisions about children on this node into an ETS table, so that a failure
  # can show what each node did with one child id. Tracing slows the node: off by default.

  alias Drove.DynamicSupervisor.{Impl, Lifecycle}

  @traced [
    {Impl, :start_takeover, 3},
    {Impl, :child_started, 4},
    {Impl, :child_down, 3},
    {Impl, :evict, 3},
    {Impl, :put_child, 5},
    {Impl, :delete_child, 2},
    {Impl, :apply_diff, 2},
    {Lifecycle, :on_entry, 1},
    {Lifecycle, :on_exit, 1}
  ]

  @spec start([atom()]) :: :ok
  def start(sups) do
    parent = self()

    pid =
      spawn(fn ->
        :ets.new(__MODULE__, [:named_table, :public, :ordered_set])
        send(parent, :ready)
        loop()
      end)

    receive do: (:ready -> :ok)

    for sup <- sups, p = Process.whereis(sup), is_pid(p) do
      :erlang.trace(p, true, [:call, :arity, :timestamp, {:tracer, pid}])
    end

    for {m, f, a} = mfa <- @traced do
      Code.ensure_loaded!(m)
      :erlang.trace_pattern(mfa, match_spec(m, f, a), [:local])
    end

    :ok
  end

  # the arguments other than the instance's state, and the return value of the decisions
  defp match_spec(Lifecycle, _f, 1),
    do: [{[:"$1"], [], [{:message, :"$1"}, {:return_trace}]}]

  defp match_spec(Impl, :apply_diff, 2),
    do: [{[:"$1", :_], [], [{:message, :"$1"}]}]

  defp match_spec(Impl, _f, a) do
    vars = for i <- 1..(a - 1), do: :"$#{i}"
    [{[:_ | vars], [], [{:message, vars}]}]
  end

  defp loop do
    receive do
      msg ->
        :ets.insert(__MODULE__, {:erlang.unique_integer([:monotonic]), msg})
        loop()
    end
  end

  @doc """
  The traced events about child `id` (and the pids it ran as here), in order, each with the
  decision that followed it.
  """
  @spec events(term()) :: list()
  def events(id) do
    if :ets.whereis(__MODULE__) == :undefined do
      []
    else
      all = for {_, msg} <- :ets.tab2list(__MODULE__), do: msg
      pids = for m <- all, pid <- started_pid(m, id), do: pid
      terms = [id | pids]

      all
      |> Enum.with_index()
      |> Enum.reduce({[], false}, fn {m, _}, {acc, after_match} ->
        cond do
          Enum.any?(terms, &mentions?(m, &1)) -> {[simplify(m) | acc], true}
          after_match and lifecycle?(m) -> {[simplify(m) | acc], true}
          true -> {acc, false}
        end
      end)
      |> elem(0)
      |> Enum.reverse()
    end
  end

  defp started_pid({:trace_ts, _, :call, {Impl, :child_started, 4}, [id, pid, _], _}, id),
    do: [pid]

  defp started_pid(_, _), do: []

  defp lifecycle?({:trace_ts, _, _, {Lifecycle, _, _}, _, _}), do: true
  defp lifecycle?(_), do: false

  defp simplify({:trace_ts, _pid, kind, what, extra, ts}), do: {ts, kind, what, extra}
  defp simplify({:trace_ts, _pid, kind, what, ts}), do: {ts, kind, what}
  defp simplify(other), do: other

  defp mentions?(t, t), do: true
  defp mentions?(t, term) when is_tuple(t), do: mentions?(Tuple.to_list(t), term)
  defp mentions?(l, term) when is_list(l), do: Enum.any?(l, &mentions?(&1, term))

  defp mentions?(m, term) when is_map(m) and not is_struct(m),
    do: Enum.any?(m, fn {k, v} -> mentions?(k, term) or mentions?(v, term) end)

  defp mentions?(_, _), do: false
end

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

  @doc "The distinct digests of the registry's and the supervisor's replicas here."
  @spec digests() :: {[binary()], [binary()]}
  def digests do
    digest = fn name -> Drove.Native.digest(elem(Drove.Handles.lookup(name), 1)) end
    {regs() |> Enum.map(digest) |> Enum.uniq(), sups() |> Enum.map(digest) |> Enum.uniq()}
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

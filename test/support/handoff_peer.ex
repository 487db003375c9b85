defmodule Drove.Test.Keeper do
  @moduledoc false
  # A handoff: true child for state handoff tests. It holds a value (`:fresh` when it started
  # without a handed-over state), counts the {:drove, :end_handoff, _} casts it received and
  # whether one came after any other request. It registers itself locally under its tag.
  #
  # How it answers {:drove, :begin_handoff} (`mode`):
  #   :resume          {:resume, value}
  #   :restart         :restart
  #   :silent          never (the supervisor's call times out)
  #   :big             {:resume, {value, 100 KB of zeros}} (its value on the new node is the
  #                    first element)
  #   {:block, pid}    tells `pid` {:asked, tag, node()} and answers {:resume, value} once it
  #                    receives :answer
  #   {:hold_stop, pid} {:resume, value}; it traps exits, and when stopped tells `pid`
  #                    {:terminating, tag, self()} and exits once it receives :go
  use GenServer

  @doc "A child spec: `handoff: true`, shutdown `shutdown` ms."
  @spec spec(atom(), term(), timeout()) :: map()
  def spec(tag, mode \\ :resume, shutdown \\ 5000) do
    %{
      id: tag,
      start: {__MODULE__, :start_link, [tag, mode]},
      handoff: true,
      shutdown: shutdown
    }
  end

  @spec start_link(atom(), term()) :: GenServer.on_start()
  def start_link(tag, mode), do: GenServer.start_link(__MODULE__, {tag, mode}, name: tag)

  @impl true
  def init({tag, mode}) do
    if match?({:hold_stop, _}, mode), do: Process.flag(:trap_exit, true)
    {:ok, %{tag: tag, mode: mode, value: :fresh, delivered: 0, late: false, requests: 0}}
  end

  @impl true
  def handle_call({:put, v}, _from, s),
    do: {:reply, :ok, %{s | value: v, requests: s.requests + 1}}

  def handle_call(:get, _from, s),
    do: {:reply, %{value: s.value, delivered: s.delivered, late: s.late}, s}

  def handle_call({:drove, :begin_handoff}, from, s) do
    case s.mode do
      m when m == :resume or elem(m, 0) == :hold_stop ->
        {:reply, {:resume, s.value}, s}

      :restart ->
        {:reply, :restart, s}

      :silent ->
        {:noreply, s}

      :big ->
        {:reply, {:resume, {s.value, :binary.copy(<<0>>, 100_000)}}, s}

      {:block, pid} ->
        send(pid, {:asked, s.tag, node()})

        receive do
          :answer -> :ok
        end

        GenServer.reply(from, {:resume, s.value})
        {:noreply, s}
    end
  end

  @impl true
  def handle_cast({:drove, :end_handoff, state}, s) do
    value = if s.mode == :big, do: elem(state, 0), else: state
    {:noreply, %{s | value: value, delivered: s.delivered + 1, late: s.requests > 0}}
  end

  def handle_cast(:crash, s), do: {:stop, :crashed, s}

  @impl true
  def terminate(_reason, %{mode: {:hold_stop, pid}} = s) do
    send(pid, {:terminating, s.tag, self()})

    receive do
      :go -> :ok
    end
  end

  def terminate(_reason, _s), do: :ok
end

defmodule Drove.Test.HandoffPeer do
  @moduledoc false
  # Runs ON peer nodes, for state handoff tests.

  @doc "Starts a Keeper child for each of `tags` through this node."
  @spec start_keepers(atom(), [atom()], term(), timeout()) :: :ok
  def start_keepers(sup, tags, mode \\ :resume, shutdown \\ 5000) do
    for tag <- tags do
      {:ok, _} =
        Drove.DynamicSupervisor.start_child(sup, Drove.Test.Keeper.spec(tag, mode, shutdown))
    end

    :ok
  end

  @doc """
  The node the uniform strategy places `spec` on when the members of `sup` on `nodes` are all
  alive (where a child of that spec starts, and where it moves to).
  """
  @spec home(atom(), [node()], map()) :: node()
  def home(sup, nodes, spec) do
    members =
      for n <- Enum.sort(nodes),
          do: %Drove.DynamicSupervisor.Member{name: {sup, n}, status: :alive}

    {:ok, %{name: {_, node}}} = Drove.Distribution.Uniform.choose_node(spec, members)
    node
  end

  @doc """
  The first `n` tags `prefix_i` (i = 1, 2, ...) whose spec `make.(tag)` is placed on `node`
  (see `home/3`).
  """
  @spec placed(atom(), [node()], node(), String.t(), non_neg_integer(), (atom() -> map())) ::
          [atom()]
  def placed(sup, nodes, node, prefix, n, make) do
    Stream.iterate(1, &(&1 + 1))
    |> Stream.map(&:"#{prefix}_#{&1}")
    |> Stream.filter(&(home(sup, nodes, make.(&1)) == node))
    |> Enum.take(n)
  end

  @doc "The child pids the replicated entries name, as seen here: `%{tag => pid | nil}`."
  @spec pids(atom()) :: %{atom() => pid() | nil}
  def pids(sup) do
    for {_id, _owner, %{id: tag}, pid} <- GenServer.call(sup, :children), into: %{} do
      {tag, pid}
    end
  end

  @doc "The child id of `tag`'s entry as seen here."
  @spec id(atom(), atom()) :: term()
  def id(sup, tag) do
    [id] = for {id, _owner, %{id: ^tag}, _pid} <- GenServer.call(sup, :children), do: id
    id
  end

  @doc """
  The entry of child `id` in this node's replica, read without its instance (which a hook
  may hold): `{owner, spec, pid}` or `{owner, spec, pid, state}`, or nil.
  """
  @spec raw_entry(atom(), term()) :: tuple() | nil
  def raw_entry(sup, id) do
    {_, h} = Drove.Handles.lookup(sup)

    case Drove.Native.get(h, Drove.Native.key({:child, id})) do
      {:ok, value} -> value
      :error -> nil
    end
  end

  @doc "Whether the entry of child `id` carries a state, as seen here."
  @spec carried?(atom(), term()) :: boolean()
  def carried?(sup, id), do: match?({:ok, _}, GenServer.call(sup, {:carried, id}))

  @doc """
  Installs the test hook of Drove.DynamicSupervisor.Impl on this node: at each of `steps`
  of a handoff of a child in `tags`, the process at that step sends `test` `{:handoff_hook,
  step, node(), tag, self(), ref}` and waits for `{:continue, ref}`.
  """
  @spec install_hook(pid(), [atom()], [atom()]) :: :ok
  def install_hook(test, steps, tags) do
    :persistent_term.put(
      {Drove.DynamicSupervisor, :handoff_hook},
      {__MODULE__, :pause, [test, steps, tags]}
    )
  end

  @doc false
  @spec pause(atom(), map(), pid(), [atom()], [atom()]) :: :ok
  def pause(step, %{spec: %{id: tag}}, test, steps, tags) do
    if step in steps and tag in tags do
      ref = make_ref()
      send(test, {:handoff_hook, step, node(), tag, self(), ref})
      # (self() is the process at that step: a test may wait for it to end)

      receive do
        {:continue, ^ref} -> :ok
      end
    end

    :ok
  end
end

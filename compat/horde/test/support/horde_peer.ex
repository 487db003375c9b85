defmodule Horde.Test.Worker do
  @moduledoc false
  # A child / registrant used on the runner and on peers (test modules are not loaded on
  # peers). `arg` is a keyword list: :name (a via tuple or nil), :report_to (a pid told
  # `{:worker_exit, self(), reason}` on a name conflict and `{:worker_started, self(), tag}`
  # on start), :tag, :trap (trap exits).
  use GenServer

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(arg) do
    case Keyword.get(arg, :name) do
      nil -> GenServer.start_link(__MODULE__, arg)
      name -> GenServer.start_link(__MODULE__, arg, name: name)
    end
  end

  @spec start(keyword()) :: GenServer.on_start()
  def start(arg) do
    case Keyword.get(arg, :name) do
      nil -> GenServer.start(__MODULE__, arg)
      name -> GenServer.start(__MODULE__, arg, name: name)
    end
  end

  @doc "A child spec for a Horde.DynamicSupervisor; `restart` defaults to :permanent."
  @spec spec(keyword(), atom()) :: map()
  def spec(arg, restart \\ :permanent) do
    %{
      id: Keyword.get(arg, :tag, __MODULE__),
      start: {__MODULE__, :start_link, [arg]},
      restart: restart
    }
  end

  @impl true
  def init(arg) do
    if arg[:trap], do: Process.flag(:trap_exit, true)
    if to = arg[:report_to], do: send(to, {:worker_started, self(), arg[:tag], node()})
    {:ok, arg}
  end

  @impl true
  def handle_call(:ping, _from, s), do: {:reply, {:pong, node()}, s}
  def handle_call({:stop, reason}, _from, s), do: {:stop, reason, :ok, s}

  @impl true
  def handle_info({:EXIT, _from, {:name_conflict, _, _, _} = reason}, s) do
    if to = s[:report_to], do: send(to, {:worker_exit, self(), reason})
    {:stop, :normal, s}
  end

  def handle_info({:EXIT, _from, reason}, s), do: {:stop, reason, s}
end

defmodule Horde.Test.Peer do
  @moduledoc false
  # Runs on peers: starts Horde instances under the :drove application's supervisor, so that
  # they outlive the RPC that started them (and stop gracefully with :init.stop/0).

  @spec start_registry(atom(), keyword()) :: pid()
  def start_registry(name, opts \\ []) do
    start_under_drove(
      Supervisor.child_spec({Horde.Registry, [name: name, keys: :unique] ++ opts}, id: name)
    )
  end

  @spec start_supervisor(atom(), keyword()) :: pid()
  def start_supervisor(name, opts \\ []) do
    start_under_drove(
      Supervisor.child_spec(
        {Horde.DynamicSupervisor, [name: name, strategy: :one_for_one] ++ opts},
        id: name,
        shutdown: :infinity
      )
    )
  end

  defp start_under_drove(spec) do
    {:ok, pid} = Supervisor.start_child(Drove.Supervisor, Map.put(spec, :restart, :temporary))
    pid
  end

  @doc "Stops an instance started by start_registry/2 or start_supervisor/2 gracefully."
  @spec stop(atom()) :: :ok
  def stop(name) do
    _ = Supervisor.terminate_child(Drove.Supervisor, name)
    _ = Supervisor.delete_child(Drove.Supervisor, name)
    :ok
  end

  @doc "Registers a new unlinked worker under `key`: `{:ok, pid}` or an error."
  @spec start_named(atom(), term(), pid() | nil) :: GenServer.on_start()
  def start_named(registry, key, report_to \\ nil) do
    Horde.Test.Worker.start(
      name: {:via, Horde.Registry, {registry, key}},
      report_to: report_to,
      trap: true
    )
  end

  @doc "Registers a new unlinked process under `key` with `Horde.Registry.register/3`."
  @spec register_new(atom(), term(), term(), pid() | nil) :: {pid(), term()}
  def register_new(registry, key, value, report_to) do
    parent = self()

    pid =
      spawn(fn ->
        Process.flag(:trap_exit, true)
        send(parent, {:registered, self(), Horde.Registry.register(registry, key, value)})
        wait(report_to)
      end)

    receive do
      {:registered, ^pid, result} -> {pid, result}
    after
      5000 -> raise "register_new: no answer"
    end
  end

  defp wait(report_to) do
    receive do
      {:EXIT, _, reason} = msg ->
        if report_to, do: send(report_to, {:worker_exit, self(), reason})
        unless match?({:EXIT, _, {:name_conflict, _, _, _}}, msg), do: exit(reason)

      _ ->
        wait(report_to)
    end
  end

  @spec member_statuses(atom()) :: %{node() => atom()}
  def member_statuses(supervisor) do
    supervisor
    |> :sys.get_state()
    |> Map.fetch!(:members_info)
    |> Map.new(fn {{_name, node}, %{status: status}} -> {node, status} end)
  end
end

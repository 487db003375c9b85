defmodule Drove.Test.Named do
  @moduledoc false
  # A process registered through Drove.Registry by via tuple. It traps exits, so a lost
  # name conflict arrives as a message: it reports it to `report_to` and stops normally.
  use GenServer

  @spec start(atom(), term(), pid() | nil) :: GenServer.on_start()
  def start(registry, key, report_to \\ nil) do
    GenServer.start(__MODULE__, {key, report_to}, name: {:via, Drove.Registry, {registry, key}})
  end

  @impl true
  def init({key, report_to}) do
    Process.flag(:trap_exit, true)
    {:ok, {key, report_to}}
  end

  @impl true
  def handle_call(:ping, _from, s), do: {:reply, {:pong, node()}, s}

  @impl true
  def handle_info({:EXIT, _from, {:name_conflict, _, _, _} = reason}, {key, report_to} = s) do
    if report_to, do: send(report_to, {:lost, key, self(), reason})
    {:stop, :normal, s}
  end

  def handle_info({:EXIT, _from, reason}, s), do: {:stop, reason, s}
end

defmodule Drove.Test.RegistryPeer do
  @moduledoc false
  # Helpers run ON peer nodes.

  @doc "Starts a registry owned by a long-lived holder process (not the RPC's process)."
  @spec start(atom(), keyword()) :: pid()
  def start(name, opts \\ []) do
    parent = self()

    holder =
      spawn(fn ->
        {:ok, sup} = Drove.Registry.start_link([name: name, keys: :unique] ++ opts)
        send(parent, {:started, sup})
        Process.flag(:trap_exit, true)

        receive do
          :stop -> Supervisor.stop(sup)
        end
      end)

    receive do
      {:started, _sup} -> holder
    after
      10_000 -> raise "registry #{inspect(name)} did not start"
    end
  end

  @doc "Starts `n` via-registered processes named {prefix, i}; returns how many started."
  @spec start_many(atom(), term(), Range.t(), pid() | nil) :: non_neg_integer()
  def start_many(registry, prefix, range, report_to \\ nil) do
    Enum.count(range, fn i ->
      match?({:ok, _}, Drove.Test.Named.start(registry, {prefix, i}, report_to))
    end)
  end

  @doc "Starts via-registered processes named {prefix, i}; returns [{i, pid}] of those started."
  @spec start_many_pids(atom(), term(), Range.t(), pid() | nil) :: [{integer(), pid()}]
  def start_many_pids(registry, prefix, range, report_to \\ nil) do
    for i <- range,
        {:ok, pid} <- [Drove.Test.Named.start(registry, {prefix, i}, report_to)],
        do: {i, pid}
  end

  @doc "Spawns one process that registers every {prefix, i} itself, then waits; its pid."
  @spec spawn_holder(atom(), term(), Range.t()) :: pid()
  def spawn_holder(registry, prefix, range) do
    parent = self()

    pid =
      spawn(fn ->
        for i <- range, do: {:ok, _} = Drove.Registry.register(registry, {prefix, i}, i)
        send(parent, {:holding, self()})
        receive do: (:stop -> :ok)
      end)

    receive do
      {:holding, ^pid} -> pid
    after
      10_000 -> raise "holder did not register"
    end
  end

  @doc """
  Spawns a process per {prefix, i}, all at once, each registering its key and then waiting
  (a burst of registrations from many processes); returns how many registered.
  """
  @spec spawn_each(atom(), term(), Range.t()) :: non_neg_integer()
  def spawn_each(registry, prefix, range) do
    parent = self()

    for i <- range do
      spawn(fn ->
        send(parent, {:each, match?({:ok, _}, Drove.Registry.register(registry, {prefix, i}, i))})
        receive do: (:stop -> :ok)
      end)
    end

    Enum.count(range, fn _ ->
      receive do
        {:each, ok} -> ok
      after
        10_000 -> false
      end
    end)
  end

  @doc "How many of {prefix, i} this node finds, and whether each is alive."
  @spec found(atom(), term(), Range.t()) :: non_neg_integer()
  def found(registry, prefix, range) do
    Enum.count(range, fn i ->
      case Drove.Registry.lookup(registry, {prefix, i}) do
        [{pid, _}] -> is_pid(pid)
        [] -> false
      end
    end)
  end

  @doc "The pid each key resolves to here (or nil)."
  @spec owners(atom(), [term()]) :: [pid() | nil]
  def owners(registry, keys) do
    Enum.map(keys, fn k ->
      case Drove.Registry.whereis_name({registry, k}) do
        :undefined -> nil
        pid -> pid
      end
    end)
  end

  @doc "Stops every registered process of this node whose key has the prefix."
  @spec stop_all(atom(), term()) :: :ok
  def stop_all(registry, prefix) do
    registry
    |> Drove.Registry.select([{{{prefix, :_}, :"$1", :_}, [], [:"$1"]}])
    |> Enum.filter(&(node(&1) == node()))
    |> Enum.each(&Process.exit(&1, :kill))
  end
end

defmodule Drove.Test.CountingWorker do
  @moduledoc false
  # A child that reports every start of itself to a collector process (a pid, or a
  # `{name, node}` on the test runner) as `{:drove_started, tag, pid}`: a test counts how
  # often each child was started, anywhere in the cluster. It registers no name, so a
  # second copy of a child is a second start, not a failed one.
  use GenServer

  @spec child_spec({atom(), term(), atom()}) :: Supervisor.child_spec()
  def child_spec({tag, collector, restart}) do
    %{id: tag, start: {__MODULE__, :start_link, [{tag, collector}]}, restart: restart}
  end

  @spec start_link({atom(), term()}) :: GenServer.on_start()
  def start_link(arg), do: GenServer.start_link(__MODULE__, arg)

  @impl true
  def init({tag, collector}) do
    send(collector, {:drove_started, tag, self()})
    {:ok, tag}
  end

  @impl true
  def handle_call(:tag, _from, tag), do: {:reply, tag, tag}

  @doc """
  Drains the start reports in the caller's mailbox into `acc`:
  `%{tag => [pid, ...]}`, newest first.
  """
  @spec drain(map()) :: map()
  def drain(acc \\ %{}) do
    receive do
      {:drove_started, tag, pid} -> drain(Map.update(acc, tag, [pid], &[pid | &1]))
    after
      0 -> acc
    end
  end
end

defmodule Drove.Test.Registrant do
  @moduledoc false
  # A process that registers through a given registry member and then does what it is told:
  # `{:unregister, registry, key}` and `{:call, fun}` run in the process itself.

  @spec start(atom(), term(), term()) :: pid()
  def start(registry, key, value) do
    parent = self()

    pid =
      spawn(fn ->
        result = Drove.Registry.register(registry, key, value)
        send(parent, {:registered, self(), result})
        loop()
      end)

    receive do
      {:registered, ^pid, {:ok, _}} -> pid
      {:registered, ^pid, other} -> raise "registration failed: #{inspect(other)}"
    end
  end

  @doc "Runs `fun` in the registrant and returns its result."
  @spec run(pid(), (() -> term())) :: term()
  def run(pid, fun) do
    ref = make_ref()
    send(pid, {:call, self(), ref, fun})

    receive do
      {^ref, result} -> result
    after
      5000 -> raise "registrant #{inspect(pid)} did not answer"
    end
  end

  defp loop do
    receive do
      {:call, from, ref, fun} ->
        send(from, {ref, fun.()})
        loop()
    end
  end
end

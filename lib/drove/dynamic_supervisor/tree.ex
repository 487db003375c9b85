defmodule Drove.DynamicSupervisor.Tree do
  @moduledoc false
  # The top supervisor of one instance, `:"#{name}.Supervisor"`: the instance process, the
  # OTP DynamicSupervisor that runs this node's children, the shutdown signal and the
  # telemetry poller, in that order (so on a stop the signal goes before the children, then
  # the instance).
  # :one_for_all with no restarts, as Horde: a crash of any part takes the local instance
  # down, its peers take over its children, and the parent decides what comes next.
  use Supervisor

  alias Drove.DynamicSupervisor.{Impl, Poller, Signal}

  @spec name(atom()) :: atom()
  def name(sup), do: :"#{sup}.Supervisor"

  @spec procsup(atom()) :: atom()
  def procsup(sup), do: :"#{sup}.ProcessesSupervisor"

  @impl true
  def init({mod, init_arg, name}) do
    case mod.init(init_arg) do
      {:ok, flags} ->
        flags = Impl.flags!(flags)

        children = [
          %{
            id: Impl,
            start: {Impl, :start_link, [name, flags]},
            shutdown: 30_000
          },
          %{
            id: :processes,
            start:
              {DynamicSupervisor, :start_link,
               [
                 [
                   name: procsup(name),
                   strategy: :one_for_one,
                   max_restarts: flags.max_restarts,
                   max_seconds: flags.max_seconds,
                   max_children: flags.max_children
                 ]
               ]},
            type: :supervisor,
            shutdown: :infinity
          },
          # its stop waits until every handoff: true child has answered, each within its own
          # shutdown time
          %{id: Signal, start: {Signal, :start_link, [name]}, shutdown: :infinity},
          %{id: Poller, start: {Poller, :start_link, [name, flags.horde_telemetry]}}
        ]

        Supervisor.init(children, strategy: :one_for_all, max_restarts: 0)

      :ignore ->
        :ignore

      other ->
        # start_link returns {:error, {:bad_return, {mod, :init, other}}}, as OTP's and
        # Horde's supervisors do
        exit({:bad_return, {mod, :init, other}})
    end
  end
end

defmodule Drove.DynamicSupervisor.Signal do
  @moduledoc false
  # Started last: tells the instance it may take children (init), and that the instance is
  # stopping before the children are stopped (terminate), so each is handed over.
  use GenServer

  @spec start_link(atom()) :: GenServer.on_start()
  def start_link(sup), do: GenServer.start_link(__MODULE__, sup)

  @impl true
  def init(sup) do
    Process.flag(:trap_exit, true)
    :ok = GenServer.call(sup, :ready, :infinity)
    {:ok, sup}
  end

  @impl true
  def terminate(_reason, sup) do
    GenServer.call(sup, :shutting_down, :infinity)
  catch
    :exit, _ -> :ok
  end
end

defmodule Drove.DynamicSupervisor.Starter do
  @moduledoc false
  # The start function of every child, run by the node's DynamicSupervisor on each start and
  # restart: starts the user's child, then tells the instance its pid and waits until the
  # instance has written its entry and monitors it (a local hop, no round trip): a child that
  # exits at once is then seen with its real exit reason, not as :noproc. The caller of a new
  # child waits for its entry to be durable on another member (Impl.start_child), outside
  # the node's DynamicSupervisor, which goes on with the next start.

  @spec start(atom(), term(), map(), list(), :new | :takeover) ::
          DynamicSupervisor.on_start_child()
  def start(sup, id, spec, extra, mode \\ :new) do
    {m, f, a} = spec.start

    case apply(m, f, extra ++ a) do
      {:ok, pid} = ok when is_pid(pid) ->
        started(sup, id, pid, spec, mode)
        ok

      {:ok, pid, _info} = ok when is_pid(pid) ->
        started(sup, id, pid, spec, mode)
        ok

      other ->
        other
    end
  end

  defp started(sup, id, pid, spec, _mode) do
    GenServer.call(sup, {:drove_child_started, id, pid, spec}, :infinity)
  catch
    # the instance is gone: this whole local tree is going down with it
    :exit, _ -> :ok
  end
end

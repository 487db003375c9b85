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
  alias Drove.DynamicSupervisor.{Entry, Impl}
  alias Drove.Native

  # The start function of every child, run by the node's DynamicSupervisor on each start and
  # restart: starts the user's child, then gets its entry written. A new child's entry
  # (permanent or temporary) is written here, through the replica's handle, and the instance
  # is told with a message; otherwise (a restart, a takeover, a transient child) the
  # instance writes it and monitors the child before the DynamicSupervisor goes on (a local
  # call), so that it sees a transient child's real exit reason rather than :noproc. The
  # caller of a new child waits for its entry to be durable on another member
  # (Impl.start_child), outside the node's DynamicSupervisor, which goes on with the next
  # start.

  # `mode`:
  #   :entry    a new child whose caller runs on another node: the answer carries the
  #             entry's write as a delta that the caller's node joins, as
  #             `{:ok, pid, {:drove_entry, instance, delta, :none | {:info, info}}}`;
  #   :confirm  a new child whose caller runs on this node: the instance numbers its start,
  #             and the answer carries the number the caller waits for, as
  #             `{:ok, pid, {:drove_seq, seq, :none | {:info, info}}}`;
  #   :new      as :entry, answered plainly (the caller waits for the entry's push: what
  #             callers of earlier versions ask for);
  #   :takeover a child taken over from a member that went away.
  # An unknown mode (from a caller of a later version) is handled as :takeover is: the
  # instance writes the entry, and the answer is plain.
  @spec start(atom(), term(), map(), list(), atom()) ::
          DynamicSupervisor.on_start_child()
  def start(sup, id, spec, extra, mode \\ :new) do
    {m, f, a} = spec.start

    case apply(m, f, extra ++ a) do
      {:ok, pid} = ok when is_pid(pid) ->
        started(sup, id, pid, spec, mode, ok, :none)

      {:ok, pid, info} = ok when is_pid(pid) ->
        started(sup, id, pid, spec, mode, ok, {:info, info})

      other ->
        other
    end
  end

  defp started(sup, id, pid, spec, mode, ok, info) do
    case write(sup, id, pid, spec, mode) do
      {:written, nil} -> ok
      {:written, seq} when is_integer(seq) -> {:ok, pid, {:drove_seq, seq, info}}
      {:written, {:entry, instance, delta}} -> {:ok, pid, {:drove_entry, instance, delta, info}}
      :call -> call(sup, id, pid, spec, mode, ok, info)
    end
  end

  defp call(sup, id, pid, spec, mode, ok, info) do
    case GenServer.call(sup, {:drove_child_started, id, pid, spec, mode}, :infinity) do
      {:seq, seq} -> {:ok, pid, {:drove_seq, seq, info}}
      :ok -> ok
    end
  catch
    # the instance is gone: this whole local tree is going down with it
    :exit, _ -> ok
  end

  # A new child (its id is not in the replica: not a restart) is written here, without a
  # hop through the instance, which is told after (it monitors the child then). Not a
  # transient child: one that ends before it is monitored is seen with reason :noproc, and
  # the instance must know whether a transient child's exit was normal. A start for a
  # caller on this node is numbered after its entry is written (see Impl.confirm/1).
  defp write(sup, id, pid, spec, mode) when mode in [:new, :confirm, :entry] do
    with false <- Map.get(spec, :restart, :permanent) == :transient,
         {instance, handle} <- Drove.Handles.lookup(sup),
         [{_, %{seqs: seqs}}] <- :ets.lookup(Impl.table(sup), :config),
         {:ok, delta} <- put_entry(handle, id, {sup, node()}, spec, pid, mode) do
      seq = if mode == :confirm, do: :atomics.add_get(seqs, 2, 1)
      send(instance, {:drove_child_new, id, pid, spec, seq})
      if mode == :entry, do: {:written, {:entry, instance, delta}}, else: {:written, seq}
    else
      _ -> :call
    end
  rescue
    # the instance's table is gone: it is going down
    ArgumentError -> :call
  end

  defp write(_sup, _id, _pid, _spec, _mode), do: :call

  # the entry, written only if the id has none; for :entry, also its write alone as a delta
  defp put_entry(handle, id, owner, spec, pid, mode) do
    key = Entry.child_key(id)
    value = Entry.child_value(owner, spec, pid, :none)

    if mode == :entry do
      Native.put_new_delta(handle, key, value)
    else
      with :ok <- Native.put_new(handle, key, value), do: {:ok, nil}
    end
  end
end

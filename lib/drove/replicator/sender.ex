defmodule Drove.Replicator.Sender do
  @moduledoc false
  # Sends of replication messages that never make the caller wait on a peer.
  #
  # A send to another node suspends the sender while that node's distribution buffer is over
  # its busy limit (a stalled or slow connection): a replica owner that waited there would
  # hold up every other node's registrations and replication. So send/2 tries the send with
  # :nosuspend first; when the port is busy, the message goes to this node's sender process
  # for that node instead, which does the waiting, and which takes every later message to
  # that node until its queue is empty again (so that a process's messages keep their
  # order). Past @max_queued bytes queued for one node, messages are dropped and counted:
  # the anti-entropy rounds repair what they carried once the wire moves again. A sender
  # exits when its node goes down; what it held is dropped with it.
  #
  # The table :drove_senders, {node, pid, bytes_counter}, is owned by this module's server
  # under Drove.Supervisor, which also starts the senders.
  use GenServer

  @table :drove_senders
  @max_queued 32 * 1024 * 1024

  @doc false
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc """
  Sends `msg` to `dest` without connecting and without waiting on a busy connection.
  Returns `:ok` (sent or queued behind a busy connection), `:noconnect` (not connected) or
  `:dropped` (the queue for that node is full).
  """
  @spec send(pid() | atom() | {atom(), node()}, term()) :: :ok | :noconnect | :dropped
  def send(dest, msg) do
    node = dest_node(dest)

    if node == node() do
      Kernel.send(dest, msg)
      :ok
    else
      case :ets.lookup(@table, node) do
        [{_, pid, bytes}] -> enqueue(pid, bytes, dest, msg)
        [] -> direct(node, dest, msg)
      end
    end
  end

  @doc "Bytes queued for `node` behind a busy connection."
  @spec queued(node()) :: non_neg_integer()
  def queued(node) do
    case :ets.lookup(@table, node) do
      [{_, _, bytes}] -> :counters.get(bytes, 1)
      [] -> 0
    end
  end

  defp direct(node, dest, msg) do
    case :erlang.send(dest, msg, [:noconnect, :nosuspend]) do
      :ok ->
        :ok

      :noconnect ->
        :noconnect

      :nosuspend ->
        {pid, bytes} = GenServer.call(__MODULE__, {:sender, node})
        enqueue(pid, bytes, dest, msg)
    end
  end

  defp enqueue(pid, bytes, dest, msg) do
    size = :erlang.external_size(msg)

    if :counters.get(bytes, 1) + size > @max_queued do
      :dropped
    else
      :counters.add(bytes, 1, size)
      Kernel.send(pid, {:send, dest, msg, size})
      :ok
    end
  end

  defp dest_node(pid) when is_pid(pid), do: node(pid)
  defp dest_node({_name, node}), do: node
  defp dest_node(name) when is_atom(name), do: node()

  # ------------------------------------------------------------------ server

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    Process.flag(:trap_exit, true)
    {:ok, %{}}
  end

  @impl true
  def handle_call({:sender, node}, _from, s) do
    case :ets.lookup(@table, node) do
      [{_, pid, bytes}] ->
        {:reply, {pid, bytes}, s}

      [] ->
        bytes = :counters.new(1, [:write_concurrency])
        me = self()
        pid = spawn_link(fn -> sender_init(me, node, bytes) end)
        :ets.insert(@table, {node, pid, bytes})
        {:reply, {pid, bytes}, s}
    end
  end

  @impl true
  def handle_info({:EXIT, pid, _}, s) do
    :ets.match_delete(@table, {:_, pid, :_})
    {:noreply, s}
  end

  defp sender_init(_server, node, bytes) do
    :erlang.monitor_node(node, true)
    sender_loop(node, bytes)
  end

  # Delivers what is queued, one at a time. Nothing queued: stays a moment (1 s) for the
  # next busy spell, then leaves the table and delivers what came meanwhile (a message sent
  # after that by a caller that still found this process is lost: anti-entropy repairs it).
  # Ends then, or when the node goes down (the server then removes its entry: later
  # messages are sent directly again).
  defp sender_loop(node, bytes), do: next(node, bytes, 0)

  defp next(node, bytes, wait) do
    receive do
      {:send, dest, msg, size} ->
        # may wait here: that is what this process is for
        :erlang.send(dest, msg, [:noconnect])
        :counters.sub(bytes, 1, size)
        sender_loop(node, bytes)

      {:nodedown, ^node} ->
        exit(:normal)
    after
      wait ->
        if wait == 0 do
          next(node, bytes, 1_000)
        else
          :ets.delete_object(@table, {node, self(), bytes})
          drain()
        end
    end
  end

  defp drain do
    receive do
      {:send, dest, msg, _size} ->
        :erlang.send(dest, msg, [:noconnect])
        drain()
    after
      0 -> exit(:normal)
    end
  end
end

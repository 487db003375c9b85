defmodule Drove.Liveness do
  @moduledoc """
  What this node can tell, without a round trip, about whether a node or a process is up.

  Every Drove instance answers liveness questions here, so that they all agree:

    * this node is always up (several members of one instance may run on one node);
    * another node is up while it is connected (see below);
    * a local process is up while it is alive; a remote one while its node is up.

  A connection is judged by its socket, not by `Node.list/0`. When a node halts, the kernel
  of this machine (or the network) delivers the end of the stream to every peer at once,
  but each peer's runtime handles it a few scheduling steps later, and only then drops the
  node from `Node.list/0`. In that window another node (a test runner that has just seen
  `:peer.stop/1` return, say) may already have asked this one about the stopped node's
  processes. So a remote node counts as up only while its distribution controller is
  alive and, for a TCP connection, the kernel says the peer has not ended the stream
  (`Drove.Native.tcp_peer_closed/1`, one `getsockopt` on Linux; other systems and other
  carriers fall back to the controller alone). This costs about a microsecond per remote
  answer (bench/RESULTS.md) and no message.

  What no node can know without a round trip remains: a peer that is gone but whose end of
  the stream has not arrived (a node that is halting and has not closed this connection yet,
  a machine that lost power, a cable cut) counts as up until the connection ends or times
  out (`net_ticktime`). `confirm_pid/2` pays that round trip for a caller that needs it.
  """

  @doc "Whether `node` is this node, or connected and not known to have closed."
  @spec node_up?(node()) :: boolean()
  def node_up?(node) when node == node(), do: true

  def node_up?(node) do
    case List.keyfind(:erlang.system_info(:dist_ctrl), node, 0) do
      {_, port} when is_port(port) -> port_open?(port)
      {_, pid} when is_pid(pid) -> Process.alive?(pid)
      nil -> false
    end
  end

  # The port's socket, asked of the kernel; getfd fails once the port has closed.
  defp port_open?(port) do
    case :prim_inet.getfd(port) do
      {:ok, fd} -> not Drove.Native.tcp_peer_closed(fd)
      _ -> :erlang.port_info(port, :id) != :undefined
    end
  end

  @doc "Whether `pid` is a live local process, or a process of a connected node."
  @spec pid_up?(pid()) :: boolean()
  def pid_up?(pid) when node(pid) == node(), do: Process.alive?(pid)
  def pid_up?(pid), do: node_up?(node(pid))

  @doc """
  Whether `pid` is alive, asked of its own node when it is remote: one round trip (what
  Horde pays on every remote lookup). A node that is halting does not answer, and its
  connection ends, so its pids are never confirmed, even in the moments before this node's
  runtime has handled its `nodedown`.

  A local pid is answered at once. When the remote node does not answer within `timeout`
  milliseconds (a stalled connection), the pid counts as alive: nothing says it is gone,
  and the check without a round trip (`pid_up?/1`) says the same.
  """
  @spec confirm_pid(pid(), timeout()) :: boolean()
  def confirm_pid(pid, _timeout) when node(pid) == node(), do: Process.alive?(pid)

  def confirm_pid(pid, timeout) do
    node_up?(node(pid)) and
      try do
        :erpc.call(node(pid), :erlang, :is_process_alive, [pid], timeout)
      catch
        :error, {:erpc, :timeout} -> true
        :error, {:erpc, _noconnection_or_notsup} -> false
      end
  end
end

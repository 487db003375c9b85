defmodule Drove.Liveness do
  @moduledoc """
  What this node can tell, without a round trip, about whether a node or a process is up.

  Every Drove instance answers liveness questions here, so that they all agree:

    * this node is always up (several members of one instance may run on one node);
    * another node is up while it is connected (`Node.list/0`);
    * a local process is up while it is alive; a remote one while its node is up.

  A node that has just gone away stays in `Node.list/0` until this node's runtime has
  handled the closed connection, which can lag behind what another node has already seen
  (see "What a lookup can rely on" in `Drove.Registry`).
  """

  @doc "Whether `node` is this node or a connected one."
  @spec node_up?(node()) :: boolean()
  def node_up?(node) when node == node(), do: true
  def node_up?(node), do: :lists.member(node, Node.list())

  @doc "Whether `pid` is a live local process, or a process of a connected node."
  @spec pid_up?(pid()) :: boolean()
  def pid_up?(pid) when node(pid) == node(), do: Process.alive?(pid)
  def pid_up?(pid), do: node_up?(node(pid))
end

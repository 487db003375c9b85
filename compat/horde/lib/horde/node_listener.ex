defmodule Horde.NodeListener do
  @moduledoc """
  Horde's `:auto` membership manager for one instance, served by `Drove.Membership` in
  mode `:auto`: the members of `cluster` are `{cluster, node}` for this node and every
  visible node, recomputed on every `nodeup` and `nodedown`.

  `Horde.Registry` and `Horde.DynamicSupervisor` started with `members: :auto` keep their
  members current by themselves; start a NodeListener only for an instance started with an
  explicit member list. Unlike Horde's, it never crashes on a slow or restarting instance:
  a change that could not be applied is retried.
  """

  @doc "A child spec; the id is the listener's name."
  @spec child_spec(atom()) :: Supervisor.child_spec()
  def child_spec(cluster) when is_atom(cluster) do
    %{
      id: listener_name(cluster),
      start: {__MODULE__, :start_link, [cluster]},
      type: :worker,
      shutdown: 5000
    }
  end

  @doc "Starts the listener of `cluster`, registered as `Module.concat(cluster, NodeListener)`."
  @spec start_link(atom()) :: GenServer.on_start()
  def start_link(cluster) when is_atom(cluster) do
    Drove.Membership.start_link(instances: [cluster], mode: :auto, name: listener_name(cluster))
  end

  @doc "The members `cluster` gets: `{cluster, node}` for this node and every visible node."
  @spec make_members(atom()) :: [{atom(), node()}]
  def make_members(cluster) when is_atom(cluster),
    do: Enum.map(Node.list([:visible, :this]), &{cluster, &1})

  defp listener_name(cluster), do: Module.concat(cluster, NodeListener)
end

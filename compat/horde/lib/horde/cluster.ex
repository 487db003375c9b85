defmodule Horde.Cluster do
  @moduledoc """
  Horde's membership calls, served by `Drove.Cluster`: they work on a `Horde.Registry` and on
  a `Horde.DynamicSupervisor` alike.

  Unlike Horde, removing a member never removes the registrations of a live node
  (horde#258): entries go only when their node really goes away.
  """

  @typedoc "A member: `{name, node}`, or a bare name meaning `{name, node()}`."
  @type member :: {name :: atom(), node()} | atom()

  @doc """
  Sets the members of `horde` and returns `:ok`, even for members that do not exist. A bare
  name means `{name, node()}`. Exits like `GenServer.call/3` when `horde` does not answer
  within `timeout`.
  """
  @spec set_members(GenServer.server(), [member()], timeout()) :: :ok
  def set_members(horde, members, timeout \\ 5000),
    do: Drove.Cluster.set_members(horde, members, timeout)

  @doc "The current members of `horde`, as `[{name, node}]`."
  @spec members(GenServer.server()) :: [{atom(), node()}]
  def members(horde), do: Drove.Cluster.members(horde)
end

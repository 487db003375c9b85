defmodule Horde.UniformRandomDistribution do
  @moduledoc """
  Horde's `Horde.UniformRandomDistribution`, served by `Drove.Distribution.UniformRandom`: places a child on a random `:alive` member (`{:error, :no_alive_nodes}` when none is). Always has quorum.

  Members may be `Horde.DynamicSupervisor.Member` structs or any map with `:name` and
  `:status`; the member returned is the one given.
  """

  @behaviour Horde.DistributionStrategy

  @doc "Chooses the member to start `child_spec` on: `{:ok, member}` or `{:error, reason}`."
  @impl true
  @spec choose_node(Supervisor.child_spec() | map(), [Horde.DynamicSupervisor.Member.t()]) ::
          {:ok, Horde.DynamicSupervisor.Member.t()} | {:error, term()}
  def choose_node(child_spec, members),
    do: Horde.StrategyAdapter.choose_node(Drove.Distribution.UniformRandom, child_spec, members)

  @doc "Whether `members` have quorum for this strategy."
  @impl true
  @spec has_quorum?([Horde.DynamicSupervisor.Member.t()]) :: boolean()
  def has_quorum?(members),
    do: Horde.StrategyAdapter.has_quorum?(Drove.Distribution.UniformRandom, members)
end

defmodule Horde.UniformQuorumDistribution do
  @moduledoc """
  Horde's `Horde.UniformQuorumDistribution`, served by `Drove.Distribution.UniformQuorum`: `Horde.UniformDistribution`'s placement, but only while more than half of the members that are not `:shutting_down` are `:alive` (with an even count, the smallest member by name is left out first); otherwise `choose_node/2` returns `{:error, :quorum_not_met}`. With it a supervisor cut off from the majority relinquishes its children.

  Members may be `Horde.DynamicSupervisor.Member` structs or any map with `:name` and
  `:status`; the member returned is the one given.
  """

  @behaviour Horde.DistributionStrategy

  @doc "Chooses the member to start `child_spec` on: `{:ok, member}` or `{:error, reason}`."
  @impl true
  @spec choose_node(Supervisor.child_spec() | map(), [Horde.DynamicSupervisor.Member.t()]) ::
          {:ok, Horde.DynamicSupervisor.Member.t()} | {:error, term()}
  def choose_node(child_spec, members),
    do: Horde.StrategyAdapter.choose_node(Drove.Distribution.UniformQuorum, child_spec, members)

  @doc "The same members and child spec always give the same member (no randomness)."
  @spec deterministic?() :: true
  def deterministic?, do: true

  @doc "Whether `members` have quorum for this strategy."
  @impl true
  @spec has_quorum?([Horde.DynamicSupervisor.Member.t()]) :: boolean()
  def has_quorum?(members),
    do: Horde.StrategyAdapter.has_quorum?(Drove.Distribution.UniformQuorum, members)
end

defmodule Horde.UniformQuorumDistribution do
  @moduledoc """
  Horde's `Horde.UniformQuorumDistribution`, served by `Drove.Distribution.UniformQuorum`: `Horde.UniformDistribution`'s placement, but only while more than half of the members that are not `:shutting_down` are `:alive` (with an even count, the smallest member by name is left out first); otherwise `choose_node/2` returns `{:error, :quorum_not_met}`. With it a supervisor cut off from the majority relinquishes its children.

  Members may be `Horde.DynamicSupervisor.Member` structs or any map with `:name` and
  `:status`; the member returned is the one given.
  """

  use Horde.StrategyAdapter, strategy: Drove.Distribution.UniformQuorum, deterministic: true
end

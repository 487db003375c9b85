defmodule Horde.DistributionStrategy do
  @moduledoc """
  The behaviour of a distribution strategy, given to a `Horde.DynamicSupervisor` as
  `distribution_strategy: module`.

  Strategies included: `Horde.UniformDistribution` (the default),
  `Horde.UniformQuorumDistribution` and `Horde.UniformRandomDistribution`. A strategy
  receives the supervisor's members as `Horde.DynamicSupervisor.Member` structs and must
  return one of the members it was given.
  """

  @type t :: module()

  @callback choose_node(
              child_spec :: Supervisor.child_spec() | map(),
              members :: [Horde.DynamicSupervisor.Member.t()]
            ) :: {:ok, Horde.DynamicSupervisor.Member.t()} | {:error, reason :: term()}

  @callback has_quorum?(members :: [Horde.DynamicSupervisor.Member.t()]) :: boolean()
end

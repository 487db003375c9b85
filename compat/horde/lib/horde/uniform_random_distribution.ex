defmodule Horde.UniformRandomDistribution do
  @moduledoc """
  Horde's `Horde.UniformRandomDistribution`, served by `Drove.Distribution.UniformRandom`: places a child on a random `:alive` member (`{:error, :no_alive_nodes}` when none is). Always has quorum.

  Members may be `Horde.DynamicSupervisor.Member` structs or any map with `:name` and
  `:status`; the member returned is the one given.
  """

  use Horde.StrategyAdapter, strategy: Drove.Distribution.UniformRandom
end

defmodule Horde.UniformDistribution do
  @moduledoc """
  Horde's `Horde.UniformDistribution`, served by `Drove.Distribution.Uniform`: the default strategy. It places a child on the `:alive` member that Horde 0.10 would pick: a hash ring of 128 points per member (`:erlang.phash2/2` of `{member_name, i}`), looked up with the `phash2` of the child spec without its `:id`. So mixed or rolling upgrades from Horde place children identically. `{:error, :no_alive_nodes}` when no member is alive. Always has quorum.

  Members may be `Horde.DynamicSupervisor.Member` structs or any map with `:name` and
  `:status`; the member returned is the one given.
  """

  use Horde.StrategyAdapter,
    strategy: Drove.Distribution.Uniform,
    batch: true,
    deterministic: true
end

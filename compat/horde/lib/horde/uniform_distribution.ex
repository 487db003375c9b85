defmodule Horde.UniformDistribution do
  @moduledoc """
  Horde's `Horde.UniformDistribution`, served by `Drove.Distribution.Uniform`: the default strategy. It places a child on the `:alive` member that Horde 0.10 would pick: a hash ring of 128 points per member (`:erlang.phash2/2` of `{member_name, i}`), looked up with the `phash2` of the child spec without its `:id`. So mixed or rolling upgrades from Horde place children identically. `{:error, :no_alive_nodes}` when no member is alive. Always has quorum.

  Members may be `Horde.DynamicSupervisor.Member` structs or any map with `:name` and
  `:status`; the member returned is the one given.
  """

  @behaviour Horde.DistributionStrategy

  @doc "Chooses the member to start `child_spec` on: `{:ok, member}` or `{:error, reason}`."
  @impl true
  @spec choose_node(Supervisor.child_spec() | map(), [Horde.DynamicSupervisor.Member.t()]) ::
          {:ok, Horde.DynamicSupervisor.Member.t()} | {:error, term()}
  def choose_node(child_spec, members),
    do: Horde.StrategyAdapter.choose_node(Drove.Distribution.Uniform, child_spec, members)

  @doc """
  `choose_node/2` for many specs at once, in spec order (the optional batch callback of
  `Drove.DistributionStrategy`, which `Drove.DynamicSupervisor` uses on failover).
  """
  @spec choose_nodes([Supervisor.child_spec() | map()], [Horde.DynamicSupervisor.Member.t()]) ::
          {:ok, [Horde.DynamicSupervisor.Member.t()]} | {:error, term()}
  def choose_nodes(child_specs, members),
    do: Horde.StrategyAdapter.choose_nodes(Drove.Distribution.Uniform, child_specs, members)

  @doc "The same members and child spec always give the same member (no randomness)."
  @spec deterministic?() :: true
  def deterministic?, do: true

  @doc "Whether `members` have quorum for this strategy."
  @impl true
  @spec has_quorum?([Horde.DynamicSupervisor.Member.t()]) :: boolean()
  def has_quorum?(members),
    do: Horde.StrategyAdapter.has_quorum?(Drove.Distribution.Uniform, members)
end

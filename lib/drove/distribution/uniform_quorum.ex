defmodule Drove.Distribution.UniformQuorum do
  @moduledoc """
  Horde's `Horde.UniformQuorumDistribution`: `Drove.Distribution.Uniform` placement, but only
  while `has_quorum?/1` holds; otherwise `{:error, :quorum_not_met}`.

  The quorum rule, exactly as Horde's:

    1. no members: false;
    2. otherwise take the members that are not `:shutting_down`, sorted by name;
    3. if their count is even, drop the first (the smallest name);
    4. quorum when more than half of the rest are `:alive`. `:uninitialized` and `:dead`
       members count in the denominator.

  One difference: when every member is `:shutting_down` Horde returns `nil`; this returns
  `false` (the same for every caller that tests truthiness, and a boolean as the behaviour
  says).
  """

  @behaviour Drove.DistributionStrategy

  alias Drove.Distribution.Uniform
  alias Drove.DynamicSupervisor.Member

  @doc "`Drove.Distribution.Uniform.choose_node/2` when there is quorum."
  @impl true
  @spec choose_node(map(), [Member.t()]) ::
          {:ok, Member.t()} | {:error, :no_alive_nodes | :quorum_not_met}
  def choose_node(child_spec, members) do
    if has_quorum?(members),
      do: Uniform.choose_node(child_spec, members),
      else: {:error, :quorum_not_met}
  end

  @doc "`Drove.Distribution.Uniform.choose_nodes/2` when there is quorum."
  @impl true
  @spec choose_nodes([map()], [Member.t()]) ::
          {:ok, [Member.t()]} | {:error, :no_alive_nodes | :quorum_not_met}
  def choose_nodes(child_specs, members) do
    if has_quorum?(members),
      do: Uniform.choose_nodes(child_specs, members),
      else: {:error, :quorum_not_met}
  end

  @doc "Horde's quorum rule (see the module doc)."
  @impl true
  @spec has_quorum?([Member.t()]) :: boolean()
  def has_quorum?([]), do: false

  def has_quorum?(members) when is_list(members) do
    voters =
      members
      |> Enum.reject(&match?(%{status: :shutting_down}, &1))
      |> Enum.sort_by(& &1.name)

    voters =
      case length(voters) do
        n when n > 0 and rem(n, 2) == 0 -> tl(voters)
        _ -> voters
      end

    case voters do
      [] -> false
      _ -> Enum.count(voters, &match?(%{status: :alive}, &1)) / length(voters) > 0.5
    end
  end
end

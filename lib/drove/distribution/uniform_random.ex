defmodule Drove.Distribution.UniformRandom do
  @moduledoc """
  Horde's `Horde.UniformRandomDistribution`: a random `:alive` member (drawn with the calling
  process's `:rand` state), or `{:error, :no_alive_nodes}`. `has_quorum?/1` is always true.

  Every call draws again, so the same spec can land on different members.
  """

  @behaviour Drove.DistributionStrategy

  alias Drove.DynamicSupervisor.Member

  @doc "A uniformly random alive member."
  @impl true
  @spec choose_node(map(), [Member.t()]) :: {:ok, Member.t()} | {:error, :no_alive_nodes}
  def choose_node(_child_spec, members) when is_list(members) do
    case alive(members) do
      [] -> {:error, :no_alive_nodes}
      alive -> {:ok, Enum.random(alive)}
    end
  end

  @doc "An independent random alive member for each spec."
  @impl true
  @spec choose_nodes([map()], [Member.t()]) :: {:ok, [Member.t()]} | {:error, :no_alive_nodes}
  def choose_nodes([], members) when is_list(members), do: {:ok, []}

  def choose_nodes(child_specs, members) when is_list(child_specs) do
    case alive(members) do
      [] ->
        {:error, :no_alive_nodes}

      alive ->
        t = List.to_tuple(alive)
        {:ok, Enum.map(child_specs, fn _ -> elem(t, :rand.uniform(tuple_size(t)) - 1) end)}
    end
  end

  @doc "Always true."
  @impl true
  @spec has_quorum?([Member.t()]) :: true
  def has_quorum?(_members), do: true

  defp alive(members), do: Enum.filter(members, &match?(%{status: :alive}, &1))
end

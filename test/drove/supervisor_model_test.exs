defmodule Drove.SupervisorModelTest do
  # Model-based test of Drove.DynamicSupervisor on 3 real nodes. A seeded generator draws
  # steps (start a child, end one with each kind of exit reason, kill a node, stop one
  # gracefully, split one off and heal, take a member out of the member list and back);
  # a model says which children must run after each step (OTP's restart rules; faults and
  # member changes move children but end none). After each step, once the cluster has
  # settled, every child the model holds runs exactly once in the cluster and every child it
  # dropped runs nowhere, and no child was delivered a handed-over state twice (every other
  # child started has handoff: true). The seed is printed; DROVE_MODEL_SEED=<seed> replays it.
  # `make test` runs a short sequence; `make chaos` also runs a long one (tag :chaos_long,
  # DROVE_MODEL_STEPS).
  use ExUnit.Case, async: false

  alias Drove.Test.{SupPeer, Worker}
  alias Drove.TestCluster, as: C

  @moduletag :cluster
  @moduletag :capture_log

  @sup ModelSup
  @settle 30_000

  @tag timeout: 300_000
  test "short model run (3 nodes)" do
    run(String.to_integer(System.get_env("DROVE_MODEL_SHORT_STEPS", "14")))
  end

  @tag :chaos_long
  @tag timeout: :infinity
  test "long model run (DROVE_MODEL_STEPS, default 200)" do
    run(String.to_integer(System.get_env("DROVE_MODEL_STEPS", "200")))
  end

  defp run(steps) do
    seed =
      case System.get_env("DROVE_MODEL_SEED") do
        nil -> :erlang.unique_integer([:positive]) |> rem(1_000_000)
        s -> String.to_integer(s)
      end

    IO.puts(
      "\nsupervisor model: seed #{seed}, #{steps} steps (replay with DROVE_MODEL_SEED=#{seed})"
    )

    :rand.seed(:exsss, {seed, 7, 11})
    nodes = C.start_nodes(3, prefix: "model", env: [logger: [level: :error]])
    Enum.each(nodes, &start_sup(&1, nodes))
    await_alive(nodes)

    model = %{expected: %{}, ever: [], next: 0, log: []}

    Enum.reduce(1..steps, model, fn i, model ->
      step = draw(model)
      model = apply_step(step, model, nodes)
      model = %{model | log: [step | model.log]}

      case settle(nodes, model) do
        :ok ->
          model

        {:error, violations} ->
          flunk(
            "seed #{seed}, step #{i} #{inspect(step)}: #{inspect(violations)}\n" <>
              "steps so far: #{inspect(Enum.reverse(model.log))}"
          )
      end
    end)
  end

  defp start_sup(node, nodes) do
    members = for n <- nodes, do: {@sup, n}
    # a generous restart intensity: the test ends children on purpose, often
    C.rpc(node, SupPeer, :start, [
      @sup,
      [members: members, sync_interval: 100, max_restarts: 1000]
    ])
  end

  defp await_alive(nodes) do
    C.wait_until(
      fn -> Enum.all?(nodes, &C.rpc(&1, SupPeer, :all_alive?, [@sup, length(nodes)])) end,
      @settle
    )
  end

  # ------------------------------------------------------------------ steps

  defp draw(model) do
    children? = map_size(model.expected) > 0

    case :rand.uniform(12) do
      n when n <= 4 or not children? ->
        {:start, :rand.uniform(3) - 1, Enum.random([:permanent, :transient])}

      n when n <= 7 ->
        {:exit, :rand.uniform(1000), Enum.random([:normal, :shutdown, {:shutdown, :x}, :crash])}

      8 ->
        {:kill, :rand.uniform(3) - 1}

      9 ->
        {:stop, :rand.uniform(3) - 1}

      10 ->
        {:split, :rand.uniform(3) - 1, 200 + :rand.uniform(800)}

      _ ->
        {:members, :rand.uniform(3) - 1}
    end
  end

  defp apply_step({:start, i, restart}, model, nodes) do
    tag = :"model_#{model.next}"
    model = %{model | next: model.next + 1, ever: [tag | model.ever]}

    arg = if rem(model.next, 2) == 0, do: {tag, restart, :handoff}, else: {tag, restart}

    case C.rpc(Enum.at(nodes, i), Drove.DynamicSupervisor, :start_child, [@sup, {Worker, arg}]) do
      {:ok, _} -> %{model | expected: Map.put(model.expected, tag, restart)}
      _error -> model
    end
  end

  defp apply_step({:exit, k, reason}, model, nodes) do
    tags = model.expected |> Map.keys() |> Enum.sort()
    tag = Enum.at(tags, rem(k, length(tags)))
    [node] = where(nodes, tag)
    :ok = C.rpc(node, GenServer, :cast, [tag, {:stop, reason}])

    if Drove.DynamicSupervisor.Lifecycle.restarts?(model.expected[tag], reason),
      do: model,
      else: %{model | expected: Map.delete(model.expected, tag)}
  end

  defp apply_step({:kill, i}, model, nodes) do
    node = Enum.at(nodes, i)
    C.kill(node)
    C.restart(node, connect: nodes -- [node])
    start_sup(node, nodes)
    model
  end

  defp apply_step({:stop, i}, model, nodes) do
    node = Enum.at(nodes, i)
    C.stop(node)
    C.restart(node, connect: nodes -- [node])
    start_sup(node, nodes)
    model
  end

  defp apply_step({:split, i, ms}, model, nodes) do
    node = Enum.at(nodes, i)
    C.partition([[node], nodes -- [node]])
    # the split lasts ms: each side takes over what the other ran meanwhile
    Process.sleep(ms)
    C.heal(nodes)
    model
  end

  defp apply_step({:members, i}, model, nodes) do
    out = {@sup, Enum.at(nodes, i)}
    all = for n <- nodes, do: {@sup, n}

    for n <- nodes, do: :ok = C.rpc(n, Drove.Cluster, :set_members, [@sup, all -- [out]])
    for n <- nodes, do: :ok = C.rpc(n, Drove.Cluster, :set_members, [@sup, all])
    model
  end

  # ------------------------------------------------------------------ invariants

  defp where(nodes, tag) do
    C.wait_until(
      fn ->
        case for(n <- nodes, tag in C.rpc(n, SupPeer, :running, [[tag]]), do: n) do
          [_] = one -> one
          _ -> nil
        end
      end,
      @settle
    )
  end

  defp settle(nodes, model) do
    await_alive(nodes)
    deadline = System.monotonic_time(:millisecond) + @settle
    settle(nodes, model, deadline)
  end

  defp settle(nodes, model, deadline) do
    case violations(nodes, model) do
      [] ->
        :ok

      v ->
        if System.monotonic_time(:millisecond) > deadline do
          {:error, v}
        else
          Process.sleep(100)
          settle(nodes, model, deadline)
        end
    end
  end

  defp violations(nodes, model) do
    running =
      nodes
      |> Enum.flat_map(fn n -> for t <- C.rpc(n, SupPeer, :running, [model.ever]), do: {t, n} end)
      |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))

    missing = for {t, _} <- model.expected, not Map.has_key?(running, t), do: {:not_running, t}
    twice = for {t, ns} <- running, length(ns) > 1, do: {:runs_twice, t, ns}
    ended = for {t, ns} <- running, not Map.has_key?(model.expected, t), do: {:ended_runs, t, ns}

    delivered_twice =
      for n <- nodes,
          t <- C.rpc(n, SupPeer, :delivered_twice, [model.ever]),
          do: {:delivered_twice, t, n}

    missing ++ twice ++ ended ++ delivered_twice
  end
end

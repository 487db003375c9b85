defmodule Drove.TermCodecTest do
  # The NIF's own encoder and decoder of keys and values (c_src/nif/term_fast.c) against
  # term_to_binary/binary_to_term: a key must be the same bytes whichever path encoded it,
  # and a value must read back as binary_to_term would read it.
  use ExUnit.Case, async: true

  import Bitwise

  alias Drove.Native
  alias Drove.Test.Gen

  defp canonical(t), do: :erlang.term_to_binary(t, [:deterministic, minor_version: 2])

  # Whether t holds a leaf for which leaf? is true (in tuples, lists and maps).
  defp any_leaf?(t, leaf?) when is_tuple(t), do: t |> Tuple.to_list() |> any_leaf?(leaf?)
  defp any_leaf?([h | t], leaf?), do: any_leaf?(h, leaf?) or any_leaf?(t, leaf?)
  defp any_leaf?([], _), do: false
  defp any_leaf?(t, leaf?) when is_map(t), do: leaf?.(t) or any_leaf?(Map.to_list(t), leaf?)
  defp any_leaf?(t, leaf?), do: leaf?.(t)

  defp opaque?(t) when is_pid(t) or is_reference(t) or is_port(t) or is_function(t), do: true
  defp opaque?(t) when is_bitstring(t), do: not is_binary(t)
  defp opaque?(_), do: false

  # What the fast encoder must leave to term_to_binary: maps, opaque terms, integers beyond
  # 64 bits, atoms beyond Latin-1.
  defp enc_unhandled?(t) do
    any_leaf?(t, fn
      x when is_map(x) -> true
      x when is_integer(x) -> x >= 1 <<< 64 or x < -(1 <<< 63)
      x when is_atom(x) -> x |> Atom.to_string() |> String.to_charlist() |> Enum.any?(&(&1 > 255))
      x -> opaque?(x)
    end)
  end

  # What the fast decoder must leave to binary_to_term: funs, bit strings, integers beyond 64
  # bits, atoms beyond ASCII. (Pids, ports and references it decodes one by one.)
  defp dec_unhandled?(t) do
    any_leaf?(t, fn
      x when is_integer(x) -> x >= 1 <<< 64 or x < -(1 <<< 63)
      x when is_atom(x) -> x |> Atom.to_string() |> String.to_charlist() |> Enum.any?(&(&1 > 127))
      x when is_function(x) -> true
      x when is_bitstring(x) -> not is_binary(x)
      _ -> false
    end)
  end

  defp check_term(t) do
    bytes = canonical(t)

    case Native.encode(t) do
      :fallback ->
        assert enc_unhandled?(t) or byte_size(bytes) > 64 * 1024,
               "the encoder refused a term it handles: #{inspect(t, limit: 10)}"

      enc ->
        assert enc == bytes
    end

    if byte_size(bytes) <= 64 * 1024 do
      case Native.decode(bytes) do
        {:ok, back} -> assert back === :erlang.binary_to_term(bytes)
        :fallback -> assert dec_unhandled?(t)
      end
    else
      assert_raise ArgumentError, fn -> Native.decode(bytes) end
    end
  end

  test "the encoder writes term_to_binary's bytes and the decoder reads binary_to_term's terms" do
    n = Gen.check(Gen.exunit_seed(), 3000, &Gen.term/1, fn t, _ -> check_term(t) end)
    assert n == 3000
  end

  test "edges of every encoding: integers, floats, atoms, strings, lists, tuples" do
    ints =
      for b <- [0, 7, 8, 15, 16, 31, 32, 63, 64],
          d <- [-2, -1, 0, 1, 2],
          do: [(1 <<< b) + d, -(1 <<< b) + d]

    atoms = [:"", :a, :ñandú, :"#{String.duplicate("é", 200)}", :"#{String.duplicate("a", 255)}"]

    strings = [
      ~c"",
      ~c"abc",
      Enum.to_list(0..255),
      List.duplicate(7, 65_535),
      List.duplicate(7, 65_536)
    ]

    lists = [[1 | 2], [256], [1, 2, 300], [-1], [1.0], [:a | :b], [[]], [~c"ab" | ~c"cd"]]
    tuples = [{}, List.to_tuple(Enum.to_list(1..255)), List.to_tuple(Enum.to_list(1..256))]
    floats = [0.0, -0.0, 1.5, -1.0e300, 5.0e-324]

    for t <- List.flatten(ints) ++ atoms ++ strings ++ lists ++ tuples ++ floats,
        do: check_term(t)

    # each of these must be left to term_to_binary
    for t <- [%{}, self(), make_ref(), <<1::3>>, 1 <<< 64, -(1 <<< 63) - 1, :"😀", {self()}, [%{}]] do
      assert Native.encode(t) == :fallback
    end
  end

  # Every external form of a pid, port and reference that binary_to_term reads, old and new,
  # of this node and of others (short, UTF-8 and 255-byte node names): the decoder reads each
  # as binary_to_term does, in a value, and refuses each one cut short.
  test "pids, ports and references in every encoding" do
    name = Atom.to_string(node())

    nodes =
      for n <- [name, "ghost@127.0.0.1", "nœud@hôte", String.duplicate("n", 200) <> "@h"],
          do: {n, byte_size(n)}

    atom_forms = fn {n, len} ->
      forms = [<<119, len, n::binary>>, <<118, len::16, n::binary>>]

      if n =~ ~r/^[\x00-\x7f]*$/,
        do: [<<115, len, n::binary>>, <<100, len::16, n::binary>> | forms],
        else: forms
    end

    ids =
      for node <- nodes, a <- atom_forms.(node) do
        [
          <<88, a::binary, 7::32, 0::32, 3::32>>,
          <<103, a::binary, 7::32, 0::32, 1>>,
          <<89, a::binary, 5::32, 3::32>>,
          <<120, a::binary, 5::64, 3::32>>,
          <<102, a::binary, 5::32, 1>>,
          <<90, 3::16, a::binary, 3::32, 1::32, 2::32, 3::32>>,
          <<114, 3::16, a::binary, 1, 1::32, 2::32, 3::32>>
        ]
      end
      |> List.flatten()

    # ours, as term_to_binary writes them
    ours =
      [self(), make_ref(), hd(Port.list())]
      |> Enum.map(&(canonical(&1) |> binary_part(1, byte_size(canonical(&1)) - 1)))

    for id <- ours ++ ids do
      expected =
        try do
          {:ok, :erlang.binary_to_term(<<131, id::binary>>)}
        rescue
          ArgumentError -> :error
        end

      # alone, and inside a value as the supervisor's entries hold them
      for bytes <- [<<131, id::binary>>, <<131, 104, 3, 100, 0, 1, ?a, id::binary, 97, 1>>] do
        case {expected, Native.decode(bytes)} do
          {{:ok, _}, {:ok, back}} ->
            assert back === :erlang.binary_to_term(bytes)

          {:error, {:ok, back}} ->
            flunk("decoded #{inspect(bytes)}, which binary_to_term refuses: #{inspect(back)}")

          {_, :fallback} ->
            assert expected == :error, "left #{inspect(bytes)} to the fallback"
        end

        for cut <- 1..(byte_size(bytes) - 1) do
          assert Native.decode(binary_part(bytes, 0, cut)) == :fallback
        end
      end
    end
  end

  test "the decoder refuses truncated and padded input instead of guessing" do
    for t <- [{:v, 1}, [1, 2, 3], "bin", 1.5, 1 <<< 40, %{a: 1}, ~c"str"] do
      bytes = canonical(t)
      assert {:ok, ^t} = Native.decode(bytes)

      for cut <- 0..(byte_size(bytes) - 1) do
        assert Native.decode(binary_part(bytes, 0, cut)) == :fallback
      end

      assert Native.decode(bytes <> <<0>>) == :fallback
    end
  end

  # The decoder reads peer bytes (every key and value of a delta is checked with it before a
  # join): on mutated encodings it must never crash, and whatever it accepts must be exactly
  # what binary_to_term makes of the same bytes. Run under ASan by `make test-nif-asan-short`.
  test "mutated encodings: the decoder never accepts what binary_to_term reads differently" do
    gen = fn st ->
      {t, st} = Gen.term(st)
      bytes = canonical(t)
      {n, st} = Gen.int_in(1, 4, st)

      Enum.reduce(1..n, {bytes, st}, fn _, {b, st} ->
        {kind, st} = Gen.one_of([:flip, :cut, :insert, :byte], st)
        {at, st} = Gen.int_in(0, max(byte_size(b) - 1, 0), st)
        {x, st} = Gen.int_in(0, 255, st)
        <<pre::binary-size(at), rest::binary>> = b

        mutated =
          case {kind, rest} do
            {:flip, <<c, post::binary>>} -> pre <> <<Bitwise.bxor(c, 1 <<< rem(x, 8))>> <> post
            {:byte, <<_, post::binary>>} -> pre <> <<x>> <> post
            {:cut, _} -> pre
            _ -> pre <> <<x>> <> rest
          end

        {mutated, st}
      end)
    end

    Gen.check(Gen.exunit_seed(), 4000, gen, fn bytes, _ ->
      if byte_size(bytes) <= 64 * 1024 do
        case Native.decode(bytes) do
          {:ok, t} -> assert t === :erlang.binary_to_term(bytes)
          :fallback -> :ok
        end
      end
    end)
  end

  test "put_t/get_t/delete_t and put/get/delete name the same keys" do
    {:ok, c} = Drove.CRDT.start_link([])
    {_, h} = Drove.Handles.lookup(c)

    for t <- [{:k, 1}, "k", 1 <<< 40, [1, 2], :k, {:nested, [a: 1], 2.5}] do
      assert Native.put_t(h, t, {:v, t}) == :ok
      assert Native.get(h, canonical(t)) == {:ok, {:v, t}}
      assert Native.put(h, canonical(t), canonical(:other)) == :ok
      assert Native.get_t(h, t) == {:ok, :other}
      assert Native.delete_t(h, t) == :ok
      assert Native.get(h, canonical(t)) == :error
    end

    # values above 64 KiB are written, read and decoded on a dirty scheduler: same answers
    big = :binary.copy("v", 300_000)
    assert Native.put(h, canonical(:big), canonical(big)) == :ok
    assert Native.get(h, canonical(:big)) == {:ok, big}
    assert Native.get_t(h, :big) == {:ok, big}
    assert Native.put_new(h, canonical(:big), canonical(1)) == {:exists, big}
    assert Native.put_new(h, canonical(:big2), canonical(big)) == :ok
    assert Native.get_t(h, :big2) == {:ok, big}

    assert Native.put_t(h, %{map: :key}, 1) == :fallback
    assert Native.get_t(h, self()) == :fallback
    assert Native.put_t(h, :k, :binary.copy("x", 70_000)) == :fallback
    assert Native.get(h, canonical(:k)) == :error
    assert_raise ArgumentError, fn -> Native.put_t(:not_a_replica, 1, 2) end
  end
end
